"""What alignment costs per training epoch on WN9-IMG: ComplEx vs MAP vs entity-level full OT.

Each model is built from its committed config (same rank, batch, optimizer) exactly as
``distmap train`` builds it (``LocalEngine``), and whole epochs of the real loop are timed in
alternation (one epoch of each model per round, so background load hits all alike); the table
gives the median epoch of each and its ratio to ComplEx's. Target (issue 10): a MAP epoch at
most 1.3x a ComplEx epoch. The dataset must carry text features (the main job makes them).

    python benchmarks/map_cost.py [--dataset datasets/wn9-img] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

from distmap.config import load_config
from distmap.data.kg import KnowledgeGraph
from distmap.train.fit import LocalEngine

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # row label -> config
    "ComplEx (structure)": "configs/wn9img/complex.yaml",
    "MAP w/o R & A (fusion only)": "configs/wn9img/map_wo_ra.yaml",
    "MAP (A + R)": "configs/wn9img/map.yaml",
    "entity-level full OT": "configs/wn9img/map_full_ot.yaml",
}
TARGET_MAP_RATIO = 1.3


def engines(dataset: Path, workdir: Path) -> dict[str, LocalEngine]:
    kg = KnowledgeGraph.load(dataset)
    built = {}
    for label, config in CONFIGS.items():
        cfg = load_config(ROOT / config, [f"data.path={dataset}", "track.enabled=false"])
        built[label] = LocalEngine(cfg, kg, torch.device("cpu"), workdir / f"{len(built)}.pt")
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "datasets" / "wn9-img")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per model (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        models = engines(args.dataset, Path(workdir))
        times: dict[str, list[float]] = {label: [] for label in models}
        for round_ in range(args.rounds + 1):
            for label, engine in models.items():
                seconds = engine.train_epoch(f"{label} round {round_}").seconds
                if round_:  # round 0 warms up allocator, thread pool and optimizer state
                    times[label].append(seconds)
    base = statistics.median(times["ComplEx (structure)"])
    print(
        f"**map_cost** {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · torch {torch.__version__} · threads "
        f"{torch.get_num_threads()} · {args.dataset.name}, structure + text · median of {args.rounds} epochs "
        "after 1 warm-up, models alternating\n"
    )
    print("| model | epoch s | vs ComplEx | target |\n|---|---|---|---|")
    for label, values in times.items():
        ratio = statistics.median(values) / base
        target = ""
        if label == "MAP (A + R)":
            target = f"≤ {TARGET_MAP_RATIO}×: {'met' if ratio <= TARGET_MAP_RATIO else 'NOT met'}"
        print(f"| {label} | {statistics.median(values):.2f} | {ratio:.2f}× | {target or '—'} |")


if __name__ == "__main__":
    main()
