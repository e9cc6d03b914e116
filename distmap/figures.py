"""``distmap report --store``: the paper's figures and their tables from an MLflow store.

Reads the store once (``distmap.store``) and writes, into one folder, a PNG per figure and
``report.md`` with a markdown table per figure: training curves per experiment, each study's
parameter curves (test MRR against each key a sweep varied), Fig. 1 (``wdist/<modality>``
metrics that ``distmap wdist`` adds to runs), Fig. 2a (``probe/spread`` per epoch) and the
alignment cost (``benchmarks/align_cost.py``'s run). A figure without data in the store is skipped.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections import defaultdict
from pathlib import Path

from distmap import plots
from distmap.store import RunRecord, read_store

TEST_MRR = "test/both/mrr"
FIG2A_LABELS = ("MAP", "MAP w/o R")
# Fig. 1's bars from no alignment to MAP; other labels follow in the order found.
FIG1_ORDER = ("MAP w/o R & A", "OTKGE", "entity-level full OT", "MAP w/o A", "MAP w/o R", "MAP")


def read_names(path: Path) -> dict[str, str]:
    """Entity -> display name from a TSV with a header (entity, names...), e.g. WN9-IMG's glosses file
    (``lemmas`` column: the first lemma is the name)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows, None)
        return {row[0]: row[1].split(",")[0] for row in rows if len(row) > 1}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def training_section(runs: list[RunRecord], out: Path) -> list[str]:
    by_experiment: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if "loss" in run.history:
            by_experiment[run.experiment].append(run)
    parts = []
    for experiment, members in sorted(by_experiment.items()):
        curves = {_run_label(r, members): (r.history["loss"], r.history.get("valid/both/mrr", [])) for r in members}
        png = plots.training_curves(
            curves, out / f"training_{_slug(experiment)}.png", f"{experiment}: {members[0].title}"
        )
        rows = [
            [
                _run_label(r, members),
                str(len(r.history["loss"])),
                _f(r.metrics.get("valid/both/mrr")),
                _f(r.metrics.get(TEST_MRR)),
            ]
            for r in members
        ]
        parts.append(
            f"### Training curves: {experiment}\n\n![]({png.name})\n\n"
            + _table(["run", "epochs", "last valid MRR", "test MRR (best-on-valid)"], rows)
        )
    return parts


def _run_label(run: RunRecord, members: list[RunRecord]) -> str:
    """The model label, or for a study's trials the values that set the trial apart."""
    if run.study:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in run.trial_params.items()) or "base"
    same = sum(r.label == run.label for r in members)
    return run.label if same == 1 else f"{run.label} ({run.name})"


def _heading(title: str) -> str:
    """A figure's (two-line) title as a markdown heading."""
    return title.replace("\n", ", ")


def _g(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def study_sections(runs: list[RunRecord], out: Path) -> list[str]:
    parts = []
    studies = sorted({r.study for r in runs if r.study})
    for study in studies:
        members = [r for r in runs if r.study == study and TEST_MRR in r.metrics]
        base = next((r for r in members if not r.trial_params), None)
        keys = sorted({k for r in members for k in r.trial_params})
        if base is None or not keys or any(len(r.trial_params) > 1 for r in members):
            continue  # a parameter study is a sweep: one key per trial around a base trial
        panels, rows = {}, []
        for key in keys:
            base_value = float(base.params[key])
            points = [(base_value, base.metrics[TEST_MRR])]
            points += [(float(r.trial_params[key]), r.metrics[TEST_MRR]) for r in members if key in r.trial_params]
            panels[key] = (points, base_value)
            for x, _ in sorted(points):
                run = base if x == base_value else next(r for r in members if r.trial_params.get(key) == x)
                rows.append(
                    [
                        key,
                        f"{x:g}" + (" (base)" if run is base else ""),
                        _f(run.metrics.get("valid/both/mrr")),
                        _f(run.metrics[TEST_MRR]),
                        _f(run.metrics.get("test/both/hits_at_10")),
                    ]
                )
        title = f"Parameter study {study}: {base.label}\n{base.title}, {len(members)} finished trials"
        png = plots.parameter_study(panels, out / f"params_{_slug(study)}.png", title)
        parts.append(
            f"### {_heading(title)}\n\n![]({png.name})\n\n"
            + _table(["key", "value", "valid MRR (best)", "test MRR", "test H@10"], rows)
        )
    return parts


def wdistance_section(runs: list[RunRecord], out: Path) -> list[str]:
    measured = [r for r in runs if any(k.startswith("wdist/") for k in r.metrics)]
    if not measured:
        return []
    rank = {label: i for i, label in enumerate(FIG1_ORDER)}
    measured.sort(key=lambda r: (rank.get(r.label, len(rank)), -r.wdist_time))  # newest measurement first
    absolute: dict[str, dict[str, float]] = {}
    relative: dict[str, dict[str, float]] = {}
    for run in measured:  # per label, the most recently measured run
        for prefix, into in (("wdist/", absolute), ("wdist_rel/", relative)):
            into.setdefault(
                run.label, {k.removeprefix(prefix): v for k, v in run.metrics.items() if k.startswith(prefix)}
            )
    title = f"Fig. 1: exact-LP W2 between projected modality and structural rows\nafter training, {measured[0].title}"
    png = plots.grouped_bars(absolute, out / "fig1_wdistance.png", title, "2-Wasserstein distance (embedding units)")
    rows = [
        [label, m, f"{v:.4f}", _f(relative.get(label, {}).get(m))]
        for label, by in absolute.items()
        for m, v in sorted(by.items())
    ]
    header = ["model", "modality", "W2 (exact LP, uniform weights)", "W2 / RMS norm of the structural rows"]
    return [f"### {_heading(title)}\n\n![]({png.name})\n\n" + _table(header, rows)]


def spread_section(runs: list[RunRecord], out: Path, names: dict[str, str]) -> list[str]:
    probed = sorted((r for r in runs if "probe/spread" in r.history), key=lambda r: -r.start_time)  # newest first
    chosen = [r for r in probed if r.label in FIG2A_LABELS] or probed
    series: dict[str, list[tuple[float, float]]] = {}
    for run in chosen:
        series.setdefault(run.label, run.history["probe/spread"])
    if not series:
        return []
    entities = [e.strip(" '\"") for e in chosen[0].params.get("track.probe_entities", "").strip("[]").split(",")]
    named = ", ".join(f"{names[e]} ({e})" if e in names else e for e in entities)
    title = f"Fig. 2a: spread of {len(entities)} related entities' fused rows, {chosen[0].title}"
    ylabel = "sum of pairwise L2 distances (embedding units)"
    short = ", ".join(names.get(e, e) for e in entities)
    png = plots.lines(series, out / "fig2a_spread.png", f"{title}\n{short}", "epoch", ylabel)
    epochs = sorted({step for points in series.values() for step, _ in points})
    rows = [[str(e), *(_f(dict(series[label]).get(e)) for label in series)] for e in epochs]
    return [f"### {title}\n\nEntities: {named}\n\n![]({png.name})\n\n" + _table(["epoch", *series], rows)]


def cost_section(cost: dict[str, list[tuple[int, float]]] | None, out: Path) -> list[str]:
    if not cost:
        return []
    series = {
        unit: {
            label: (cost.get(f"{key}/{unit}_s", []), cost.get(f"{key}/{unit}_s_extrapolated", []))
            for label, key in (
                ("MAP minibatch alignment, as implemented", "map"),
                ("MAP, OT on the step's rows only", "map_ot"),
                ("entity-level full OT", "full_ot"),
            )
        }
        for unit in ("step", "epoch")
    }
    title = "Alignment cost vs entity count (synthetic tables, WN9-IMG configs' align sections)"
    png = plots.alignment_cost(series, out / "align_cost.png", title)
    merged: dict[int, dict[str, float]] = defaultdict(dict)
    for key, points in cost.items():
        for n, value in points:
            merged[n][key] = value
    rows = []
    for n, by in sorted(merged.items()):
        full = by.get("full_ot/epoch_s", by.get("full_ot/epoch_s_extrapolated"))
        mark = " *" if "full_ot/epoch_s_extrapolated" in by else ""
        step = by.get("full_ot/step_s", by.get("full_ot/step_s_extrapolated"))
        rows.append(
            [
                f"{n:,}",
                f"{by['map/step_s']:.4f}",
                f"{by['map/epoch_s']:.3g}",
                _g(by.get("map_ot/step_s")),
                _g(by.get("map_ot/epoch_s")),
                f"{step:.3g}{mark}",
                f"{full:.4g}{mark}",
                f"{full / by['map/epoch_s']:,.0f}×{mark}",
            ]
        )
    header = [
        "entities",
        "MAP s/step",
        "MAP s/epoch",
        "MAP OT-only s/step",
        "MAP OT-only s/epoch",
        "full OT s/step",
        "full OT s/epoch",
        "full OT / MAP per epoch",
    ]
    return [f"### {title}\n\n![]({png.name})\n\n" + _table(header, rows) + "\n\n\\* extrapolated, not measured"]


def write_report(tracking_uri: str, out: Path, names: dict[str, str]) -> Path:
    """Every figure the store has data for, into ``out``; returns ``out/report.md``."""
    runs, cost = read_store(tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        *training_section(runs, out),
        *study_sections(runs, out),
        *wdistance_section(runs, out),
        *spread_section(runs, out, names),
        *cost_section(cost, out),
    ]
    report = out / "report.md"
    report.write_text(f"# Figures from {tracking_uri}\n\n" + "\n\n".join(sections) + "\n", encoding="utf-8")
    return report
