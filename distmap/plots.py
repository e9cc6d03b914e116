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


Series = list[tuple[float, float]]


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def training_curves(runs: dict[str, tuple[Series, Series]], path: Path, title: str) -> Path:
    """Train loss and valid MRR per epoch of several runs, label -> (loss, valid MRR)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, (loss, mrr) in runs.items():
        left.plot(*zip(*loss, strict=True), label=label)
        if mrr:
            right.plot(*zip(*mrr, strict=True), "o-", label=label)
    left.set(xlabel="epoch", ylabel="train loss (cross-entropy + terms, per example)", title="training loss")
    right.set(xlabel="epoch", ylabel="valid MRR (filtered, both directions)", title="validation")
    if right.get_legend_handles_labels()[0]:  # runs without validation draw nothing on the right
        right.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def parameter_study(panels: dict[str, tuple[Series, float]], path: Path, title: str) -> Path:
    """Test MRR against each varied key, one panel per key: key -> (points, the base value)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4 * len(panels), 7), 4.2), squeeze=False)
    for ax, (key, (points, base)) in zip(axes[0], panels.items(), strict=True):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, "o-", label="test MRR")
        ax.axvline(base, color="grey", linestyle=":", label="base config")
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])  # the values tried, nothing between
        ax.minorticks_off()
        ax.set(xlabel=key, ylabel="test MRR (filtered, both directions)", title=key.split(".")[-1])
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def grouped_bars(values: dict[str, dict[str, float]], path: Path, title: str, ylabel: str) -> Path:
    """One bar per (label, group), groups side by side: label -> group -> value."""
    groups = sorted({g for by in values.values() for g in by})
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(1.6 * len(values) + 2, 7), 4.5))
    for i, group in enumerate(groups):
        xs = [j + i * width for j in range(len(values))]
        ys = [by.get(group, float("nan")) for by in values.values()]
        bars = ax.bar(xs, ys, width, label=group)
        ax.bar_label(bars, fmt="%.3g", fontsize="small")
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(values))], list(values), rotation=15)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(title="modality")
    return _save(fig, path)


def lines(series: dict[str, Series], path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for label, points in series.items():
        ax.plot(*zip(*points, strict=True), "o-", markersize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    return _save(fig, path)


def alignment_cost(series: dict[str, dict[str, tuple[Series, Series]]], path: Path, title: str) -> Path:
    """Log-log seconds per step and per epoch against N: "step"|"epoch" -> label -> (measured, extrapolated)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, unit in zip(axes, ("step", "epoch"), strict=True):
        for i, (label, (measured, extrapolated)) in enumerate(series[unit].items()):
            color = f"C{i}"
            if measured:
                ax.plot(*zip(*measured, strict=True), "o-", color=color, label=f"{label} (measured)")
            if extrapolated:
                joined = measured[-1:] + extrapolated
                ax.plot(*zip(*joined, strict=True), "x--", color=color, label=f"{label} (extrapolated)")
        ax.set(xscale="log", yscale="log", xlabel="entities N", ylabel=f"alignment seconds per {unit}")
        ax.set_title(f"per {unit}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)
