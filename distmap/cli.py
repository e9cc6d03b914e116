"""Command line: ``distmap prepare | features | train | tune | evaluate | predict | export | report | ui``.

User errors (bad files, bad config keys) print one line naming the file and the problem and
exit with status 2; only bugs show a traceback. The commands with a `ray job submit` entrypoint
(jobs/*.py) take ``--root DIR``: run as if started in DIR, the checkout, since Ray runs a job in a
temporary copy of its working dir without the git-ignored files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from distmap.errors import DistmapError
from distmap.track import COMMAND_ENV

if TYPE_CHECKING:
    from distmap.config import Config
    from distmap.data.kg import KnowledgeGraph
    from distmap.models.model import KGEModel


def _prepare(args: argparse.Namespace) -> None:
    from distmap.data.prepare import prepare_dataset

    prepare_dataset(
        args.raw_dir,
        args.out_dir,
        overwrite=args.overwrite,
        clean=args.clean,
        skip_header=args.skip_header,
        cold_entities=args.cold_entities,
        seed=args.seed,
        cold_eligible=args.cold_eligible,
    )


def _features_text(args: argparse.Namespace) -> None:
    from distmap.data.features import embed_text

    columns = args.columns.split(",") if args.columns else None
    embed_text(args.dataset, args.source, columns=columns, modality=args.modality, batch_size=args.batch_size)


def _features_import(args: argparse.Namespace) -> None:
    from distmap.data.features import import_features

    import_features(args.dataset, args.modality, args.file, id_column=args.id_column)


def _train(args: argparse.Namespace) -> None:
    from distmap.config import load_config

    cfg = load_config(args.config, args.set)
    if cfg.scale.workers:
        from distmap.distributed.trainer import fit_distributed

        fit_distributed(cfg)
    else:
        from distmap.train.fit import fit

        fit(cfg)


def _evaluate(args: argparse.Namespace) -> None:
    from distmap.train.breakdown import DEFAULT_EDGES, breakdown_of, parse_edges, write_ranks
    from distmap.train.fit import build_filter, evaluate_split

    # argument checks first: a bad flag fails before the model is loaded
    edges = parse_edges(args.degree_edges, "--degree-edges") if args.degree_edges is not None else DEFAULT_EDGES
    if not args.breakdown and (args.degree_edges is not None or args.json or args.relations is not None):
        raise DistmapError("--degree-edges, --relations and --json go with --breakdown")
    if args.relations is not None and args.relations < 0:
        raise DistmapError(f"--relations: expected a count >= 0, got {args.relations}")
    if args.ranks is not None and Path(args.ranks).suffix != ".parquet":
        raise DistmapError(f"--ranks: expected a .parquet file name, got {args.ranks}")
    run_dir = Path(args.run_dir)
    cfg, kg, model, best_epoch = _load_run(run_dir, args.set, args.tie)
    result = evaluate_split(model, kg, args.split, build_filter(kg, model.relations.device), cfg, progress=True)
    print(f"{run_dir.name}, {args.split} split, model from epoch {best_epoch}:\n{result.table()}")
    if args.breakdown:
        buckets = breakdown_of(kg, result, args.split, edges)
        print(buckets.table(relations=20 if args.relations is None else args.relations))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(buckets.to_json() + "\n", encoding="utf-8")
            print(f"breakdown (every relation) -> {args.json}")
    if args.ranks:
        rows = write_ranks(Path(args.ranks), kg, result, args.split)
        print(f"{rows:,} queries (tail and head), one row each -> {args.ranks}")


def _predict(args: argparse.Namespace) -> None:
    from distmap.predict import Predictor, predict_file, shorten

    batch = args.queries is not None
    _check_new_entity_args(args)
    if batch and (args.out is None or args.head or args.tail or args.relation or args.candidate):
        raise DistmapError("--queries takes --out FILE.parquet|.tsv and no --head, --tail, --relation or --candidate")
    if not batch and (args.relation is None or (args.head is None) == (args.tail is None) or args.out):
        raise DistmapError("give --relation and exactly one of --head and --tail (or --queries FILE --out FILE)")
    if args.new_entity is not None and not batch and args.new_entity not in (args.head, args.tail):
        raise DistmapError(
            f"--new-entity: '{args.new_entity}' is not asked about: give --head {args.new_entity} or "
            f"--tail {args.new_entity}"
        )
    run_dir = Path(args.run_dir)
    cfg, kg, model, best_epoch = _load_run(run_dir, args.set, args.tie)
    new = None
    if args.new_entity is not None or args.new_entities is not None:
        from distmap.new_entities import fused_rows, new_entity, read_new_entities

        visual = Path(args.new_visual) if args.new_visual is not None else None
        known = set(kg.entities)
        if args.new_entity is not None:
            new = new_entity(args.new_entity, args.text, visual, known)
        else:
            new = read_new_entities(Path(args.new_entities), visual, known)
    if new is None:
        predictor = Predictor(model, kg, cfg.train.tie)
    else:
        rows = fused_rows(model, new, kg.root, cfg.data.modalities)
        predictor = Predictor(model, kg, cfg.train.tie, new_names=new.names, new_rows=rows)
    if batch:
        count = predict_file(predictor, Path(args.queries), Path(args.out), args.k, args.batch_size)
        added = f", {len(new.names):,} new entities" if new is not None else ""
        print(f"{count:,} queries, top {args.k} each -> {args.out} (model from epoch {best_epoch}{added})")
        return
    query = predictor.query(head=args.head, relation=args.relation, tail=args.tail)
    candidate = predictor.answer(args.candidate) if args.candidate else None
    found = predictor.top_k([query], args.k)
    labels = (
        f"labels: {predictor.labels.describe()}"
        if predictor.labels is not None
        else "ids only: the dataset keeps no entity labels (`distmap features text` keeps them)"
    )
    print(
        f"{predictor.describe(query)}: top {found.ids.shape[1]} of {kg.num_entities:,} entities, {run_dir.name} "
        f"from epoch {best_epoch}; known: a true triple of that split; {labels}"
    )
    asked = predictor.name(query.entity)
    if query.entity >= kg.num_entities:
        print(f"{asked}: a new entity, not in the dataset: ranked from its features alone (no structural row)")
    elif predictor.label(query.entity):
        print(f"{asked}: {shorten(predictor.label(query.entity), 100)}")
    print(predictor.table(found))
    if candidate is not None:
        score, rank = predictor.candidate(query, candidate)
        known = predictor.split_of(query, candidate) or "-"
        label = predictor.label(candidate)
        print(
            f"candidate {args.candidate}{f' ({shorten(label)})' if label else ''}: score {score:.4f}, "
            f"filtered rank {rank:g} (ties: {cfg.train.tie}), known: {known}"
        )


def _check_new_entity_args(args: argparse.Namespace) -> None:
    """The flags of new entities go together: fail before a model is loaded."""
    if args.new_entity is not None and args.new_entities is not None:
        raise DistmapError("give --new-entity NAME or --new-entities FILE.tsv, not both")
    if args.text is not None and args.new_entity is None:
        raise DistmapError("--text goes with --new-entity NAME (a --new-entities file has a text column)")
    if args.new_visual is not None and args.new_entity is None and args.new_entities is None:
        raise DistmapError("--new-visual goes with --new-entity NAME or --new-entities FILE.tsv")


def _export(args: argparse.Namespace) -> None:
    from distmap.config import load_config
    from distmap.export import export_run

    run_dir = Path(args.run_dir)
    new_entities = Path(args.new_entities) if args.new_entities is not None else None
    new_visual = Path(args.new_visual) if args.new_visual is not None else None
    if new_visual is not None and new_entities is None:
        raise DistmapError("--new-visual goes with --new-entities FILE.tsv (one row per entity of it)")
    cfg = load_config(run_dir / "config.yaml", args.set)
    done = export_run(run_dir, cfg, Path(args.out), new_entities=new_entities, new_visual=new_visual)
    new, first = done.new_rows, done.entity_rows - done.new_rows
    ids = f"id {first:,}" if new == 1 else f"ids {first:,} to {done.entity_rows - 1:,}"
    appended = f" (of which {new:,} new: {ids}, column new = true)" if new else ""
    print(
        f"{done.entity_rows:,} entity rows{appended} (vector width {done.dim}, Parquet row groups: "
        f"{done.row_groups}) -> {done.entities}\n"
        f"{done.relation_rows:,} relation rows (reciprocals included) -> {done.relations}\n"
        f"model from epoch {done.epoch}"
    )


def _load_run(run_dir: Path, overrides: list[str], tie: str | None) -> tuple[Config, KnowledgeGraph, KGEModel, int]:
    """(config, dataset, best model, its epoch) of a finished run; ``tie`` overrides the run's tie rule."""
    from distmap.config import load_config
    from distmap.data.kg import KnowledgeGraph
    from distmap.restore import load_best_model
    from distmap.train.fit import resolve_device

    cfg = load_config(run_dir / "config.yaml", [*overrides, *([f"train.tie={tie}"] if tie else [])])
    kg = KnowledgeGraph.load(cfg.data.path)
    model, best_epoch = load_best_model(run_dir, cfg, kg, resolve_device(cfg.train.device))
    return cfg, kg, model, best_epoch


def _tune(args: argparse.Namespace) -> None:
    from distmap.tune.run import run_study
    from distmap.tune.study import load_study

    run_study(load_study(args.study, args.set))


def _report(args: argparse.Namespace) -> None:
    if not args.runs and not args.store:
        raise DistmapError("give run folders (a results table) and/or --store URI (figures into --out)")
    if args.runs:
        from distmap.report import load_runs, results_table

        runs = load_runs([Path(p) for p in args.runs])
        if not runs:
            raise DistmapError(f"no metrics.json under {', '.join(args.runs)}: train some runs first")
        print(results_table(runs))
        if args.breakdown:
            from distmap.report import breakdown_table

            titles = {
                "answer_deg": "by the answer entity's train degree",
                "query_deg": "by the query entity's train degree",
                "cold": "warm queries and those with a cold (train-unseen) entity",
            }
            for group, title in titles.items():
                print(f"\nMRR (share of queries) {title}:")
                print(breakdown_table(runs, group))
    elif args.breakdown:
        raise DistmapError("--breakdown reads run folders: give them (distmap report RUNS --breakdown)")
    if args.store:
        from distmap.figures import read_names, write_report

        names = read_names(Path(args.names)) if args.names else {}
        report = write_report(args.store, Path(args.out), names)
        print(f"figures and tables -> {report.parent} ({report.name} links them)")


def _wdist(args: argparse.Namespace) -> None:
    from distmap.diagnostics.wdistance import modality_distances

    print("| run | model | epoch | modality | entities | W2 (exact LP) | W2 / RMS structural norm | MLflow run |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        d = modality_distances(Path(run_dir))
        for m, value in d.distances.items():
            mlflow_run = d.mlflow_run_id or "-"
            print(
                f"| {d.run} | {d.label} | {d.epoch} | {m} | {d.entities[m]:,} | {value:.4f} | {d.relative[m]:.4f} "
                f"| {mlflow_run} |"
            )


def _ui(args: argparse.Namespace) -> None:
    from distmap.ui import serve

    serve(args.store, args.port)


PATH_ARGUMENTS = {
    "config": "config",
    "study": "study",
    "run_dir": "run_dir",
    "queries": "--queries",
    "out": "--out",
    "json": "--json",
    "ranks": "--ranks",
    "new_entities": "--new-entities",
    "new_visual": "--new-visual",
}
"""The file and folder arguments of the commands that take ``--root`` (argparse dest -> name)."""


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root",
        metavar="DIR",
        help="run as if started in DIR: relative paths (arguments, the config's data.path, track.output_dir and "
        "sqlite store) resolve there; under `ray job submit --working-dir .` give --root $PWD",
    )


def _run(args: argparse.Namespace) -> None:
    """Run the command, from ``--root`` if given (as ``git -C``: its relative paths resolve there)."""
    from distmap.config import refuse_relative_in_ray_copy

    root = getattr(args, "root", None)
    if root is not None and not Path(root).is_dir():
        raise DistmapError(f"--root {root}: not a folder")
    with contextlib.chdir(root) if root is not None else contextlib.nullcontext():
        if hasattr(args, "root"):  # a command with a `ray job submit` entrypoint (jobs/*.py)
            given = {name: getattr(args, dest, None) for dest, name in PATH_ARGUMENTS.items()}
            refuse_relative_in_ray_copy({name: str(value) for name, value in given.items() if value is not None})
        args.func(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distmap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="raw TSV folder (train/valid/test) -> dataset directory")
    p.add_argument("raw_dir", help="folder with train/valid/test.tsv[.gz] (h, r, t per line)")
    p.add_argument("out_dir", help="dataset directory to write (Parquet triples, tables, manifest.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset directory")
    p.add_argument(
        "--clean",
        action="store_true",
        help="drop duplicate lines and valid triples also in train or test; removed.tsv lists each with its reason",
    )
    p.add_argument("--skip-header", action="store_true", help="skip exactly the first line of each split file")
    # checked by prepare_dataset (one-line errors naming the flag), hence plain strings here
    p.add_argument(
        "--cold-entities",
        metavar="FRACTION",
        help="cold-start split: pick this share (0 < FRACTION < 1) of the eligible entities and move every train "
        "triple touching them to valid/test, half each (cold_entities.tsv, moved.tsv)",
    )
    p.add_argument("--seed", metavar="S", help="seed of the --cold-entities pick and split (default 0)")
    p.add_argument(
        "--cold-eligible",
        metavar="FILE",
        help="TSV with a header, first column = entity: the entities with features that --cold-entities may pick "
        "(rows with all other columns empty are not eligible; default: every entity)",
    )
    p.set_defaults(func=_prepare)

    feats = sub.add_parser("features", help="add a feature modality to a dataset directory")
    fsub = feats.add_subparsers(dest="features_command", required=True)
    p = fsub.add_parser("text", help="embed per-entity text with the offline MiniLM encoder")
    p.add_argument("dataset", help="a dataset directory written by `distmap prepare`")
    p.add_argument("--source", required=True, help="TSV with a header; first column = entity name")
    p.add_argument("--columns", help="comma-separated text columns to join (default: all but the first)")
    p.add_argument("--modality", default="text", help="feature modality name to write (default: text)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (default: 64)")
    p.set_defaults(func=_features_text)
    p = fsub.add_parser("import", help="import a feature matrix (.npy or .parquet) for any modality")
    p.add_argument("dataset", help="a dataset directory written by `distmap prepare`")
    p.add_argument("--modality", required=True, help="e.g. visual")
    p.add_argument("--file", required=True, help=".npy (N, D) float matrix or Parquet file of features")
    p.add_argument("--id-column", help="Parquet column of entity names (else rows are in sorted-entity order)")
    p.set_defaults(func=_features_import)

    p = sub.add_parser("train", help="train and evaluate a model from a YAML config")
    p.add_argument("config", help="YAML run config, e.g. configs/wn9img/complex.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=0.05")
    _add_root(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("tune", help="a Ray Tune study over a training config; every trial an MLflow run")
    p.add_argument("study", help="YAML study, e.g. configs/tune/wn9img_map_params.yaml; run again to resume it")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the training config"
    )
    _add_root(p)
    p.set_defaults(func=_tune)

    p = sub.add_parser("evaluate", help="evaluate a run's best checkpoint (filtered ranking)")
    p.add_argument("run_dir", help="a run folder written by `distmap train` (runs/<name>)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split to rank (default: test)")
    p.add_argument(
        "--tie",
        choices=["realistic", "optimistic", "pessimistic"],
        help="how a tied score ranks: mean of best and worst (realistic), best, or worst (as kbc, OTKGE)",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also MRR / H@1 / H@10 per train-degree bucket of the answer and of the query entity, "
        "per relation category (1-1, 1-N, N-1, N-N) and per relation",
    )
    p.add_argument(
        "--degree-edges",
        metavar="E0,E1,...",
        help="with --breakdown: increasing degree edges; 0,3,10 (the default) gives buckets 0, 1-3, 4-10, >10",
    )
    p.add_argument(
        "--relations", type=int, metavar="K", help="with --breakdown: relation rows to print, most queries first (20)"
    )
    p.add_argument("--json", metavar="FILE", help="with --breakdown: write it (every relation) to FILE as JSON")
    p.add_argument(
        "--ranks",
        metavar="FILE.parquet",
        help="write one row per query: head, relation, tail, direction, the three tie ranks, both train degrees",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    _add_root(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="top-k answers of (h, r, ?) or (?, r, t) from a run's best checkpoint")
    p.add_argument("run_dir", help="a run folder written by `distmap train` (runs/<name>), single or sharded")
    p.add_argument("--head", metavar="NAME", help="the known head: predict tails of (NAME, relation, ?)")
    p.add_argument("--tail", metavar="NAME", help="the known tail: predict heads of (?, relation, NAME)")
    p.add_argument("--relation", metavar="NAME", help="the relation of the query (exact name)")
    p.add_argument("--k", type=int, default=10, help="how many entities to list per query (default: 10)")
    p.add_argument("--candidate", metavar="NAME", help="also print this entity's score and filtered rank")
    p.add_argument("--queries", metavar="FILE", help="TSV of queries (head, relation, tail; '?' for the one asked for)")
    p.add_argument(
        "--out", metavar="FILE", help="with --queries: rows (query, rank, entity, score, known) to .parquet/.tsv"
    )
    p.add_argument("--batch-size", type=int, default=256, help="queries scored at a time with --queries (default: 256)")
    p.add_argument("--tie", choices=["realistic", "optimistic", "pessimistic"], help="tie rule of --candidate's rank")
    p.add_argument(
        "--new-entity",
        metavar="NAME",
        help="an entity not in the dataset, ranked from its --text (or --new-visual row); ask with --head/--tail NAME",
    )
    p.add_argument("--text", metavar="TEXT", help="with --new-entity: its text, embedded with the dataset's encoder")
    p.add_argument(
        "--new-entities",
        metavar="FILE.tsv",
        help="new entities (header; columns name, text) that --queries (or --head/--tail) may name",
    )
    p.add_argument(
        "--new-visual",
        metavar="FILE.npy",
        help="visual rows of the new entities, one per entity in order (width: the dataset's visual features)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    _add_root(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="a run's best entity and relation vectors to Parquet")
    p.add_argument("run_dir", help="a run folder written by `distmap train` (runs/<name>), single or sharded")
    p.add_argument(
        "--out", required=True, metavar="FILE.parquet", help="entity rows; relations go to FILE.relations.parquet"
    )
    p.add_argument(
        "--new-entities",
        metavar="FILE.tsv",
        help="append the fused rows of entities not in the dataset (header; columns name, text); column new = true",
    )
    p.add_argument("--new-visual", metavar="FILE.npy", help="with --new-entities: their visual rows, one per entity")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    _add_root(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("report", help="results table of runs (paper beside) and/or the figures from an MLflow store")
    p.add_argument("runs", nargs="*", help="run folders or folders of runs (each with metrics.json)")
    p.add_argument("--store", metavar="URI", help="MLflow store to draw figures from, e.g. sqlite:///mlflow.db")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="with run folders: also each run's test MRR per train-degree bucket of the answer and query entity",
    )
    p.add_argument("--out", default="docs/figures", help="folder for the PNGs and report.md (default: docs/figures)")
    p.add_argument(
        "--names", metavar="TSV", help="entity display names (header; entity, names), e.g. WN9-IMG's glosses file"
    )
    p.set_defaults(func=_report)

    p = sub.add_parser("wdist", help="Fig. 1: exact-LP W2 between each modality and structure of finished runs")
    p.add_argument("run_dirs", nargs="+", help="run folders (runs/<name>); the values are added to their MLflow runs")
    p.set_defaults(func=_wdist)

    p = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over the project's store")
    p.add_argument("--store", default="mlflow.db", help="the SQLite store (default: ./mlflow.db)")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    p.set_defaults(func=_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow runs are tagged with the command that made them, also on Ray workers (see distmap.track).
    os.environ.setdefault(COMMAND_ENV, shlex.join(["distmap", *(sys.argv[1:] if argv is None else argv)]))
    try:
        _run(args)
    except DistmapError as err:
        print(f"distmap {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
