"""RESULTS' cold-start tables: test MRR by bucket, mean ± std over the runs of each row.

    python scripts/cold_results.py "ComplEx=runs/a-seed0,runs/a-seed1" "MAP (default)=runs/b-seed0" ...

Each row is ``label=run,run,...``; every run's best checkpoint is evaluated again on its test split
(``distmap.train.breakdown.run_breakdown``: the same counts ``distmap evaluate --breakdown`` gives), so
runs trained before a bucket group existed are measured alike. Columns: overall MRR, warm queries
(both entities in some train triple), queries whose answer / query entity is cold (no train
triple), and answers seen 1–3, 4–10, > 10 times.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from distmap.train.breakdown import run_breakdown

COLUMNS = (  # (header, group, bucket label)
    ("overall", None, None),
    ("warm", "cold", "warm"),
    ("answer cold", "cold", "answer cold"),
    ("query cold", "cold", "query cold"),
    ("answer deg 1-3", "answer_deg", "1-3"),
    ("answer deg 4-10", "answer_deg", "4-10"),
    ("answer deg >10", "answer_deg", ">10"),
)


def cell(values: list[float]) -> str:
    if any(math.isnan(v) for v in values):  # an empty bucket (no cold entity in the dataset)
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(rows: list[str]) -> None:
    print("| row | runs | " + " | ".join(h for h, _, _ in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    shares: dict[str, float] = {}
    for row in rows:
        label, _, runs = row.partition("=")
        values: dict[str, list[float]] = {h: [] for h, _, _ in COLUMNS}
        for run in runs.split(","):
            result, _ = run_breakdown(Path(run))
            for header, group, bucket in COLUMNS:
                b = result.overall if group is None else result.group(group)[bucket]
                values[header].append(b.mrr if b.queries else float("nan"))
                shares[header] = b.share
        print(f"| {label} | {len(runs.split(','))} | " + " | ".join(cell(values[h]) for h, _, _ in COLUMNS) + " |")
    print("| share of queries | | " + " | ".join(f"{shares[h]:.1%}" for h, _, _ in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
