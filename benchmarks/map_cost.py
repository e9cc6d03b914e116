"""What alignment costs per training epoch on WN9-IMG: ComplEx vs MAP vs entity-level full OT.

Each model is built from its committed config (same rank, batch, optimizer) exactly as
``distmap train`` builds it (``LocalEngine``), and whole epochs of the real loop are timed in
alternation (one epoch of each model per round, so background load hits all alike); the table
gives the median epoch of each and its ratio to ComplEx's. Target (issue 10): a MAP epoch at
most 1.3x a ComplEx epoch. The multimodal configs train with the ``model.cold`` defaults (a twin
objective with 30 % of the structural views dropped: a second scoring pass per step), so each
multimodal model is timed twice: as configured, and with ``model.cold.dropout=0`` (one scoring
pass, as before the twin): the second isolates what the alignment terms cost. The dataset must
carry text features (the main job makes them). Writes its record (``benchmarks/record.py``).

    python benchmarks/map_cost.py [--dataset datasets/wn9-img] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from record import cpu_name, recorded  # benchmarks/ is on the path when run as a script

from distmap.config import load_config
from distmap.data.kg import KnowledgeGraph
from distmap.train.fit import LocalEngine

ROOT = Path(__file__).resolve().parents[1]
NO_TWIN = ["model.cold.dropout=0"]
CASES = {  # record key -> (row label, config, extra overrides)
    "complex": ("ComplEx (structure)", "configs/wn9img/complex.yaml", []),
    "fusion": ("MAP w/o R & A (fusion only), twin default", "configs/wn9img/map_wo_ra.yaml", []),
    "map": ("MAP (A + R), twin default", "configs/wn9img/map.yaml", []),
    "fusion_no_twin": ("MAP w/o R & A (fusion only), no twin", "configs/wn9img/map_wo_ra.yaml", NO_TWIN),
    "map_no_twin": ("MAP (A + R), no twin", "configs/wn9img/map.yaml", NO_TWIN),
    "full_ot": ("entity-level full OT (no twin)", "configs/wn9img/map_full_ot.yaml", NO_TWIN),
}
TARGET_MAP_RATIO = 1.3


def engines(dataset: Path, workdir: Path) -> dict[str, LocalEngine]:
    kg = KnowledgeGraph.load(dataset)
    built = {}
    for key, (_, config, extra) in CASES.items():
        cfg = load_config(ROOT / config, [f"data.path={dataset}", "track.enabled=false", *extra])
        built[key] = LocalEngine(cfg, kg, torch.device("cpu"), workdir / f"{key}.pt")
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "datasets" / "wn9-img")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per model (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with recorded("map_cost", args) as record:
        with tempfile.TemporaryDirectory() as workdir:
            models = engines(args.dataset, Path(workdir))
            times: dict[str, list[float]] = {key: [] for key in models}
            for round_ in range(args.rounds + 1):
                for key, engine in models.items():
                    seconds = engine.train_epoch(f"{key} round {round_}").seconds
                    if round_:  # round 0 warms up allocator, thread pool and optimizer state
                        times[key].append(seconds)
        base = statistics.median(times["complex"])
        print(
            f"**map_cost** · {cpu_name()} · torch {torch.__version__} · threads {torch.get_num_threads()} · "
            f"{args.dataset.name}, structure + text · median of {args.rounds} epochs after 1 warm-up, "
            "models alternating\n"
        )
        print("| model | epoch s | vs ComplEx | target |\n|---|---|---|---|")
        for key, values in times.items():
            median = statistics.median(values)
            record.values[key] = {"epoch_s": values, "median_s": median, "ratio": median / base}
            target = ""
            if key.startswith("map"):
                met = median / base <= TARGET_MAP_RATIO
                target = f"≤ {TARGET_MAP_RATIO}×: {'met' if met else 'NOT met'}"
            print(f"| {CASES[key][0]} | {median:.2f} | {median / base:.2f}× | {target or '—'} |")
        record.values["terms_over_fusion"] = {
            "twin": record.values["map"]["median_s"] / record.values["fusion"]["median_s"],
            "no_twin": record.values["map_no_twin"]["median_s"] / record.values["fusion_no_twin"]["median_s"],
        }


if __name__ == "__main__":
    main()
