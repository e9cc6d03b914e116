"""Results tables from finished runs: mean ± std over seeds, beside the paper's numbers."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from distmap.errors import DataError

# ICASSP 2025 MAP paper, Table 1 (filtered, test): MRR, H@1, H@3, H@10. Reference values, not ours.
PAPER: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "fb-img": {
        "transe": (0.712, 0.618, 0.781, 0.859),
        "distmult": (0.706, 0.606, 0.742, 0.808),
        "complex": (0.808, 0.757, 0.845, 0.892),
        "rotate": (0.794, 0.744, 0.827, 0.883),
        "transae": (0.742, 0.691, 0.785, 0.844),
        "ikrl": (0.755, 0.698, 0.794, 0.857),
        "tbkge": (0.812, 0.764, 0.850, 0.902),
        "mmkrl": (0.827, 0.783, 0.857, 0.906),
        "otkge": (0.843, 0.799, 0.876, 0.916),
        "map": (0.854, 0.815, 0.884, 0.921),
        "map w/o r & a": (0.837, 0.795, 0.862, 0.910),
        "map w/o r": (0.850, 0.809, 0.881, 0.919),
        "map w/o a": (0.839, 0.797, 0.868, 0.913),
    },
    "wn9-img": {
        "transe": (0.865, 0.765, 0.816, 0.871),
        "distmult": (0.901, 0.895, 0.913, 0.925),
        "complex": (0.908, 0.903, 0.907, 0.928),
        "rotate": (0.910, 0.901, 0.915, 0.926),
        "transae": (0.898, 0.894, 0.908, 0.922),
        "ikrl": (0.901, 0.900, 0.912, 0.928),
        "tbkge": (0.912, 0.904, 0.914, 0.931),
        "mmkrl": (0.913, 0.905, 0.917, 0.932),
        "otkge": (0.923, 0.911, 0.930, 0.947),
        "map": (0.930, 0.918, 0.936, 0.955),
        "map w/o r & a": (0.917, 0.906, 0.918, 0.931),
        "map w/o r": (0.927, 0.915, 0.934, 0.951),
        "map w/o a": (0.920, 0.910, 0.926, 0.942),
    },
}
METRICS = ("mrr", "hits@1", "hits@3", "hits@10")
REQUIRED = ("dataset", "model", "modalities", "test", "test_both_by_tie", "best_epoch", "train_seconds")


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Every ``metrics.json`` under the given run folders (or folders of runs)."""
    runs = []
    for path in paths:
        for file in sorted(path.rglob("metrics.json")) if path.is_dir() else [path]:
            try:
                run = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise DataError(file, f"cannot read run metrics: {err}") from None
            missing = [key for key in REQUIRED if key not in run]
            if missing:
                raise DataError(file, f"not a distmap run summary (missing {', '.join(missing)})")
            runs.append(run)
    return runs


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _short(commit: str | None) -> str:
    """``abc1234`` (``abc1234+dirty``) of a run's commit; runs written before commits were recorded: —."""
    if not commit:
        return "—"
    sha, _, rest = commit.partition("+")
    return sha[:7] + (f"+{rest}" if rest else "") if len(sha) == 40 else commit


def results_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per (dataset, model), test metrics over seeds, the paper's row beside."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["dataset"], run.get("label") or run["model"], "+".join(run["modalities"]))].append(run)
    header = (
        "| dataset | model | modalities | seeds | MRR | H@1 | H@3 | H@10 | MRR (pessimistic ties) "
        "| paper MRR / H@1 / H@3 / H@10 | MRR − paper | epochs (best) | train s/run | commits |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for (dataset, model, modalities), members in sorted(groups.items()):
        cells = [_mean_std([r["test"]["both"][m] for r in members]) for m in METRICS]
        pess = _mean_std([r["test_both_by_tie"]["pessimistic"]["mrr"] for r in members])
        paper = PAPER.get(dataset, {}).get(model.lower())
        paper_cell = " / ".join(f"{v:.3f}" for v in paper) if paper else "—"
        mrr = statistics.mean(r["test"]["both"]["mrr"] for r in members)
        gap = f"{mrr - paper[0]:+.3f}" if paper else "—"
        epochs = ", ".join(str(r["best_epoch"]) for r in members)
        seconds = statistics.mean(r["train_seconds"] for r in members)
        commits = ", ".join(_short(r.get("commit")) for r in members)  # one per seed, as epochs
        lines.append(
            f"| {dataset} | {model} | {modalities} | {len(members)} | "
            + " | ".join(cells)
            + f" | {pess} | {paper_cell} | {gap} | {epochs} | {seconds:.0f} | {commits} |"
        )
    return "\n".join(lines)


def breakdown_table(runs: list[dict[str, Any]], group: str = "answer_deg") -> str:
    """Markdown: one row per run with a breakdown in its metrics.json (``distmap train`` writes it),
    the MRR of each bucket of ``group`` ("answer_deg", "query_deg" or "cold") and its share of the queries.
    Runs trained before the breakdown existed are listed as such."""
    with_buckets = {id(r) for r in runs if r.get("breakdown", {}).get("groups", {}).get(group)}
    labels: list[str] = []
    for run in runs:
        if id(run) in with_buckets:
            labels += [b["bucket"] for b in run["breakdown"]["groups"][group] if b["bucket"] not in labels]
    named = (lambda label: label) if group == "cold" else (lambda label: f"deg {label}")
    header = "| run | dataset | model | seed | MRR | " + " | ".join(named(label) for label in labels) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for run in sorted(runs, key=lambda r: (r["dataset"], r.get("label") or r["model"], r.get("seed", 0))):
        name = run.get("run", "?")
        model = run.get("label") or run["model"]
        first = f"| {name} | {run['dataset']} | {model} | {run.get('seed', '—')} | {run['test']['both']['mrr']:.3f} |"
        if id(run) not in with_buckets:
            lines.append(first + " no breakdown (trained before it existed: `distmap evaluate RUN --breakdown`) |")
            continue
        buckets = {b["bucket"]: b for b in run["breakdown"]["groups"][group]}
        cells = []
        for label in labels:
            b = buckets.get(label)
            cells.append("—" if b is None or not b["queries"] else f"{b['mrr']:.3f} ({b['share']:.1%})")
        lines.append(first + " " + " | ".join(cells) + " |")
    return "\n".join(lines)
