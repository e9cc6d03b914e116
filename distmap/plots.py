"""Plots saved as PNG files (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def training_curve(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss per epoch (left axis) and validation MRR at each validation (right axis)."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    valid = [h for h in history if "valid/both/mrr" in h]
    if valid:
        ax2 = ax.twinx()
        ax2.plot([h["epoch"] for h in valid], [h["valid/both/mrr"] for h in valid], "o-", color="tab:red")
        ax2.set_ylabel("valid MRR (both directions)", color="tab:red")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
