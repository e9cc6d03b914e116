"""Seconds of the alignment alone, per training step and per epoch: entity-level full OT vs MAP's
minibatch alignment, on synthetic entity tables of 10^3 to 10^6 rows.

Both terms are timed as training runs them (``distmap.align.terms``, forward + backward through the
projected and structural rows), with the align sections of the WN9-IMG configs:
``configs/wn9img/map.yaml`` (MAP: ``sample`` of the step's entities + ``extra`` uniform ones, exact
OT on those) and ``configs/wn9img/map_full_ot.yaml`` (full OT: the N x N cost every step, its plan
re-solved every ``plan_every`` steps; ``--full-solver`` exact by default, the faster one here: POT's
log-domain Sinkhorn took 257 s for one 3,000 x 3,000 plan on one thread, the exact LP ~5 s). The
step's entities are the heads and tails of a batch of ``--batch-size`` queries (2 x batch ids drawn
uniformly). An epoch has ceil(queries / batch) steps,
with WN9-IMG's 15,854 / 6,555 query groups per entity, so MAP's epoch grows with N through the step
count only, and full OT's per step as well (N^2 cost entries, a plan whose solve grows faster).

Full OT is measured while its predicted plan time stays under ``--budget`` seconds and its N x N
matrices fit in ``--max-gib``; larger N are extrapolated from a power law fitted to the measured
points (log-log least squares) and marked so. Results print as a markdown table, go to the run's
record (``benchmarks/record.py``; ``--json`` writes a copy) and, as metrics with step = N, to the
MLflow run ``align-cost`` of experiment ``benchmarks`` (``distmap report`` draws the figure from there).

    python benchmarks/align_cost.py [--sizes 1000,3000,6555,10000,30000,100000,300000,1000000]
        [--threads 1] [--budget 120] [--max-gib 4] [--repeats 3] [--tracking-uri sqlite:///mlflow.db]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from record import cpu_name, recorded
from train_speed import median_time  # benchmarks/ is on the path when run as a script

from distmap.align.terms import FullAlignment, MinibatchAlignment, alignment_terms
from distmap.config import Config, TrackConfig, load_config
from distmap.models.model import EntityViews
from distmap.track import Tracker

FEATURE_WIDTH = 384  # WN9-IMG's text feature rows
QUERIES_PER_ENTITY = 15854 / 6555  # WN9-IMG: grouped (h, r) queries with reciprocals per entity
REPO = Path(__file__).resolve().parents[1]


def int_list(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",")]


def views(n: int, dim: int, seed: int = 0) -> tuple[EntityViews, list[torch.Tensor]]:
    """Random structural rows and projected text rows (leaves with gradients), all entities having
    the modality; plus a linear projection of 384-wide feature rows (the text encoder's width) that
    recomputes any rows on their own, as ``MultimodalModel`` gives its views (MAP's terms use it)."""
    generator = torch.Generator().manual_seed(seed)
    structure = torch.randn(n, dim, generator=generator).requires_grad_()
    projected = (torch.randn(n, dim, generator=generator) + 0.5).requires_grad_()
    features = torch.randn(n, FEATURE_WIDTH, generator=generator)
    weight = (torch.randn(FEATURE_WIDTH, dim, generator=generator) / FEATURE_WIDTH**0.5).requires_grad_()
    present = torch.ones(n, dtype=torch.bool)

    def project_rows(_: str, rows: torch.Tensor) -> torch.Tensor:
        return features[rows] @ weight  # (k, dim)

    v = EntityViews(0, structure, structure, {"text": projected}, {"text": present}, project_rows=project_rows)
    return v, [structure, projected, weight]


def step_call(term: Callable, v: EntityViews, leaves: list[torch.Tensor], batch: int, n: int) -> Callable[[], None]:
    def call() -> None:
        rows = torch.unique(torch.randint(0, n, (2 * batch,)))
        term(v, rows).backward()
        for leaf in leaves:
            leaf.grad = None

    return call


def steps_per_epoch(n: int, batch: int) -> int:
    return math.ceil(QUERIES_PER_ENTITY * n / batch)


def measure_map(term: MinibatchAlignment, n: int, dim: int, batch: int, repeats: int) -> float:
    v, leaves = views(n, dim)
    return median_time(step_call(term, v, leaves, batch, n), repeats)


def measure_full(term: FullAlignment, n: int, dim: int, batch: int, repeats: int) -> tuple[float, float]:
    """(seconds of a step on a kept plan, seconds a plan solve adds): one step that solves (no
    warm-up: it is long), then steps of a copy that keeps the plan just solved."""
    v, leaves = views(n, dim)
    solving = dataclasses.replace(term, plan_every=1, _plans={})
    start = time.perf_counter()
    step_call(solving, v, leaves, batch, n)()
    solve = time.perf_counter() - start
    keeping = dataclasses.replace(solving, plan_every=10**9)  # shares the plan; its step count is past 0
    reuse = median_time(step_call(keeping, v, leaves, batch, n), repeats)
    return reuse, max(solve - reuse, 0.0)


def predicted(points: list[tuple[int, float]], n: int) -> float:
    """Seconds at ``n`` from a power law over the last three points (0 with fewer than two)."""
    if len(points) < 2:
        return 0.0
    a, b = power_law(*zip(*points[-3:], strict=True))
    return a * n**b


def power_law(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(a, b) of y = a x^b, least squares in log-log over the given points."""
    b, log_a = np.polyfit(np.log(xs), np.log(ys), 1)
    return math.exp(log_a), b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int_list, default=int_list("1000,3000,6555,10000,30000,100000,300000,1000000"))
    parser.add_argument("--map-config", default=str(REPO / "configs/wn9img/map.yaml"))
    parser.add_argument("--full-config", default=str(REPO / "configs/wn9img/map_full_ot.yaml"))
    parser.add_argument(
        "--full-solver",
        choices=["exact", "sinkhorn"],
        default="exact",
        help="full OT's solver (default exact: at these sizes POT's exact LP is faster than log-domain Sinkhorn)",
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="queries per step (the configs' train.batch_size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=120.0, help="largest predicted full-OT plan time measured (s)")
    parser.add_argument("--max-gib", type=float, default=4.0, help="largest N x N float32 matrix measured (GiB)")
    parser.add_argument("--json", default=None, help="also write the values here (the record has them)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with recorded("align_cost", args) as record:
        measure(args, record.values)


def measure(args: argparse.Namespace, values: dict) -> None:

    overrides = ["data.path=unused"]
    map_cfg = load_config(args.map_config, overrides)
    full_cfg = load_config(args.full_config, [*overrides, f"align.solver={args.full_solver}"])
    (map_term,) = [t for t in alignment_terms(map_cfg.align) if isinstance(t, MinibatchAlignment)]
    (full_term,) = alignment_terms(full_cfg.align)
    dim = 2 * map_cfg.model.rank  # ComplEx rows: real and imaginary halves
    plan_every = full_cfg.align.plan_every

    # The OT work of a MAP step alone: the term on a table of just the step's 2 x batch rows. Its
    # cost does not depend on N; the full-table column matches it as long as the term touches only
    # the rows it aligns (it projects them on their own: no dense N x d gradient).
    ot_step = measure_map(map_term, 2 * args.batch_size, dim, args.batch_size, args.repeats)
    rows, full_points = [], []
    for n in sorted(args.sizes):
        steps = steps_per_epoch(n, args.batch_size)
        map_step = measure_map(map_term, n, dim, args.batch_size, args.repeats)
        row = {
            "entities": n,
            "steps_per_epoch": steps,
            "map_step_s": map_step,
            "map_epoch_s": map_step * steps,
            "map_ot_step_s": ot_step,
            "map_ot_epoch_s": ot_step * steps,
        }
        fits = 3 * 4 * n * n / 2**30 <= args.max_gib  # cost, plan and a gradient, float32
        if fits and predicted(full_points, n) <= args.budget:
            reuse, solve = measure_full(full_term, n, dim, args.batch_size, args.repeats)
            full_points.append((n, solve))
            row.update(full_reuse_s=reuse, full_solve_s=solve, full_extrapolated=False)
        rows.append(row)
        print(f"N={n}: {row}", flush=True)

    measured = [r for r in rows if "full_solve_s" in r]
    tail = measured[-3:]
    solve_fit = power_law([r["entities"] for r in tail], [r["full_solve_s"] for r in tail])
    reuse_fit = power_law([r["entities"] for r in tail], [r["full_reuse_s"] for r in tail])
    for r in rows:
        if "full_solve_s" not in r:
            n = r["entities"]
            r.update(
                full_reuse_s=reuse_fit[0] * n ** reuse_fit[1],
                full_solve_s=solve_fit[0] * n ** solve_fit[1],
                full_extrapolated=True,
            )
        steps = r["steps_per_epoch"]
        plans = math.ceil(steps / plan_every)
        r["full_epoch_s"] = steps * r["full_reuse_s"] + plans * r["full_solve_s"]
        r["full_step_s"] = r["full_epoch_s"] / steps
        r["ratio_epoch"] = r["full_epoch_s"] / r["map_epoch_s"]

    print_table(rows, map_cfg, full_cfg, solve_fit, reuse_fit, args)
    out = {
        "cpu": cpu_name(),
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "threads": args.threads,
        "batch_size": args.batch_size,
        "dim": dim,
        "map_align": map_cfg.align.__dict__,
        "full_align": full_cfg.align.__dict__,
        "solve_power_law": solve_fit,
        "reuse_power_law": reuse_fit,
        "rows": rows,
    }
    values.update(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")
    log_mlflow(rows, out, args)


def print_table(
    rows: list[dict],
    map_cfg: Config,
    full_cfg: Config,
    solve_fit: tuple[float, float],
    reuse_fit: tuple[float, float],
    args: argparse.Namespace,
) -> None:
    print(
        f"\n{cpu_name()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; alignment alone, {args.threads} thread(s), "
        f"batch {args.batch_size} queries, rows of width "
        f"{2 * map_cfg.model.rank}; MAP: sample {map_cfg.align.sample} + extra {map_cfg.align.extra}, "
        f"{map_cfg.align.solver}; full OT: {full_cfg.align.solver}, plan every {full_cfg.align.plan_every} steps; "
        f"full-OT solve ~ N^{solve_fit[1]:.2f}, step ~ N^{reuse_fit[1]:.2f} (fit on the largest measured N)\n"
    )
    print(
        "| entities | steps/epoch | MAP s/step | MAP s/epoch | MAP OT-only s/step | MAP OT-only s/epoch "
        "| full OT s/step | full OT s/epoch | full OT / MAP per epoch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = " *" if r["full_extrapolated"] else ""
        print(
            f"| {r['entities']:,} | {r['steps_per_epoch']:,} | {r['map_step_s']:.4f} | {r['map_epoch_s']:.2f} | "
            f"{r['map_ot_step_s']:.4f} | {r['map_ot_epoch_s']:.2f} | "
            f"{r['full_step_s']:.3g}{mark} | {r['full_epoch_s']:.4g}{mark} | {r['ratio_epoch']:,.0f}×{mark} |"
        )
    print("\n* extrapolated (power law over the largest measured N), not measured")


def log_mlflow(rows: list[dict], out: dict, args: argparse.Namespace) -> None:
    tracker = Tracker(TrackConfig(tracking_uri=args.tracking_uri, experiment="benchmarks"))
    tracker.start("align-cost", {"threads": args.threads, "batch_size": args.batch_size, "dim": out["dim"]})
    for r in rows:
        suffix = "_extrapolated" if r["full_extrapolated"] else ""
        tracker.log_metrics(
            {
                "map/step_s": r["map_step_s"],
                "map/epoch_s": r["map_epoch_s"],
                "map_ot/step_s": r["map_ot_step_s"],
                "map_ot/epoch_s": r["map_ot_epoch_s"],
                f"full_ot/step_s{suffix}": r["full_step_s"],
                f"full_ot/epoch_s{suffix}": r["full_epoch_s"],
            },
            step=r["entities"],
        )
    if args.json:
        tracker.log_artifact(Path(args.json))
    tracker.finish()


if __name__ == "__main__":
    main()
