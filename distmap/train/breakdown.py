"""The ruler by bucket: filtered metrics per train degree of the answer and of the query entity,
per relation category (Bordes et al. 2013) and per relation; and one row per query.

It reads an ``EvalResult``'s per-query counts, so it scores nothing and needs no model: on a
sharded run the counts are already all-reduced, and the chief's breakdown is the one of P = 1.

- **Queries.** Tail query of (h, r, t): the *query entity* is h, the *answer* t; head query
  (asked as (t, r + R, ?)): the query entity is t, the answer h. Every bucket pools both directions.
- **Train degree** of an entity: the number of train lines (triples as listed, no reciprocals) it
  occurs in as head or tail; a self-loop line counts once. Degree 0: no train triple has it (cold).
- **Degree buckets** from edges e0 < e1 < ... < ek: [0, e0], (e0, e1], ..., (ek, inf). The
  default (0, 3, 10) gives "0", "1-3", "4-10", ">10". MLflow allows no ">" in a metric name, so
  the last bucket's key there is "gt10" (``test/answer_deg_gt10/mrr``).
- **Cold start**: "warm" queries have both entities in some train triple; "answer cold", "query
  cold" and "both cold" the others (a cold-start split's targets are stated on these buckets).
- **Categories** (Bordes et al. 2013, with their 1.5 threshold): per relation, over its unique
  train triples, tails per head = triples / distinct heads (the mean number of tails of an (h, r)
  pair) and heads per tail = triples / distinct tails. "1" below 1.5, "N" from 1.5 on: heads per
  tail names the left side, tails per head the right one (1-1, 1-N, N-1, N-N). A relation with no
  train triple is "unseen".
- **Metrics** per bucket: query count, share of all queries, MRR, Hits@1, Hits@10 under the
  result's tie rule. Every query is in exactly one bucket of each group, so the count-weighted
  mean of a group's MRRs is the overall MRR.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from distmap.data.kg import entity_degrees
from distmap.errors import DataError, DistmapError
from distmap.train.evaluate import EvalResult, TieBreak

if TYPE_CHECKING:
    from distmap.data.kg import KnowledgeGraph

__all__ = [
    "BREAKDOWN_JSON",
    "BREAKDOWN_MD",
    "CATEGORIES",
    "DEFAULT_EDGES",
    "Breakdown",
    "Bucket",
    "DegreeBucket",
    "breakdown",
    "breakdown_of",
    "check_edges",
    "degree_buckets",
    "parse_edges",
    "query_ranks",
    "read_breakdown",
    "relation_categories",
    "run_breakdown",
    "train_degrees",
    "train_triples",
    "weighted_mrr",
    "write_ranks",
]

DEFAULT_EDGES = (0, 3, 10)
CATEGORY_THRESHOLD = 1.5
CATEGORIES = ("1-1", "1-N", "N-1", "N-N")
UNSEEN = "unseen"
BREAKDOWN_JSON = "breakdown.json"
BREAKDOWN_MD = "breakdown.md"
#: groups in table order: (key used in metric names and JSON, title in the table)
GROUPS = (
    ("answer_deg", "answer degree"),
    ("query_deg", "query degree"),
    ("cold", "cold start"),
    ("category", "category"),
    ("relation", "relation"),
)
#: groups logged as metrics; per-relation numbers stay in the table and JSON (FB-IMG has 1,231 relations)
METRIC_GROUPS = ("answer_deg", "query_deg", "cold", "category")
#: the ``cold`` group: which of a query's two entities (the one given, the one asked for) has no train triple
COLD_BUCKETS = (("warm", "warm"), ("answer cold", "answer"), ("query cold", "query"), ("both cold", "both"))
METRICS = ("mrr", "hits@1", "hits@10")


# ---------------------------------------------------------------------------------------------
# degrees, buckets, categories


@dataclass(frozen=True)
class DegreeBucket:
    """Degrees ``lo`` to ``hi`` inclusive (``hi`` None: no upper end); ``label`` for tables,
    ``key`` for metric names (MLflow-safe: no ">")."""

    lo: int
    hi: int | None
    label: str
    key: str


def check_edges(edges: Sequence[int], name: str = "edges") -> tuple[int, ...]:
    """Non-empty, non-negative, strictly increasing integers; else a one-line error naming ``name``."""
    values = tuple(edges)
    if not values:
        raise DistmapError(f"{name}: give at least one degree edge, e.g. 0,3,10")
    if any(not isinstance(e, (int, np.integer)) or isinstance(e, bool) for e in values):
        raise DistmapError(f"{name}: degree edges must be integers, got {list(values)}")
    if values[0] < 0:
        raise DistmapError(f"{name}: degree edges must be >= 0, got {','.join(map(str, values))}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise DistmapError(f"{name}: degree edges must be strictly increasing, got {','.join(map(str, values))}")
    return tuple(int(e) for e in values)


def parse_edges(text: str, name: str = "--degree-edges") -> tuple[int, ...]:
    """``"0,3,10"`` -> (0, 3, 10), checked; errors name ``name``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise DistmapError(f"{name}: expected comma-separated integers such as 0,3,10, got {text!r}") from None
    return check_edges(values, name)


def degree_buckets(edges: Sequence[int] = DEFAULT_EDGES) -> tuple[DegreeBucket, ...]:
    """The buckets of ``edges``: [0, e0], (e0, e1], ..., (ek, inf)."""
    edges = check_edges(edges)
    bounds = [(0, edges[0])] + [(a + 1, b) for a, b in itertools.pairwise(edges)]
    out = [DegreeBucket(lo, hi, *([f"{lo}"] * 2 if lo == hi else [f"{lo}-{hi}"] * 2)) for lo, hi in bounds]
    out.append(DegreeBucket(edges[-1] + 1, None, f">{edges[-1]}", f"gt{edges[-1]}"))
    return tuple(out)


def train_degrees(train: Tensor | np.ndarray, num_entities: int) -> np.ndarray:
    """(N,) int64: the number of train lines each entity occurs in as head or tail (a self-loop once),
    as the models count it (``entity_degrees``)."""
    triples = torch.as_tensor(np.asarray(train, dtype=np.int64).reshape(-1, 3))
    return entity_degrees(triples, num_entities).numpy()


def relation_categories(
    train: Tensor | np.ndarray, num_relations: int, threshold: float = CATEGORY_THRESHOLD
) -> tuple[str, ...]:
    """Per relation id: "1-1", "1-N", "N-1" or "N-N" by Bordes et al.'s rule, "unseen" without train triples."""
    triples = np.asarray(train, dtype=np.int64).reshape(-1, 3)
    h, r, t = triples.T
    n = int(max(h.max(), t.max())) + 1 if len(triples) else 1
    # one int64 key per triple / pair: np.unique on 1-D keys, not rows (train can hold 10^8 lines)
    if num_relations * n * n < 2**62:
        pair, t = np.divmod(np.unique((r * n + h) * n + t), n)
        r, h = np.divmod(pair, n)
    else:
        r, h, t = np.unique(triples[:, [1, 0, 2]], axis=0).T
    count = np.bincount(r, minlength=num_relations)
    heads = np.bincount(np.unique(r * n + h) // n, minlength=num_relations)
    tails = np.bincount(np.unique(r * n + t) // n, minlength=num_relations)
    out = []
    for lines, nh, nt in zip(count.tolist(), heads.tolist(), tails.tolist(), strict=True):
        if lines == 0:
            out.append(UNSEEN)
            continue
        tails_per_head, heads_per_tail = lines / nh, lines / nt
        left = "N" if heads_per_tail >= threshold else "1"
        right = "N" if tails_per_head >= threshold else "1"
        out.append(f"{left}-{right}")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# the breakdown


@dataclass(frozen=True)
class Bucket:
    """One bucket's numbers; ``mrr`` and the hits are None when no query falls into it."""

    label: str
    key: str
    queries: int
    share: float
    mrr: float | None
    hits_at_1: float | None
    hits_at_10: float | None

    def metrics(self) -> dict[str, float]:
        """``{"mrr", "hits@1", "hits@10", "queries"}`` (empty for an empty bucket)."""
        if not self.queries:
            return {}
        return {"mrr": self.mrr, "hits@1": self.hits_at_1, "hits@10": self.hits_at_10, "queries": self.queries}

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.label,
            "key": self.key,
            "queries": self.queries,
            "share": self.share,
            "mrr": self.mrr,
            "hits@1": self.hits_at_1,
            "hits@10": self.hits_at_10,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Bucket:
        return cls(d["bucket"], d["key"], d["queries"], d["share"], d["mrr"], d["hits@1"], d["hits@10"])


@dataclass(frozen=True)
class Breakdown:
    """Filtered metrics of one split's queries (both directions pooled) per bucket of each group:
    ``answer_deg``, ``query_deg`` (train degree buckets of ``edges``), ``cold`` (warm: both entities
    in some train triple; answer / query / both cold), ``category``, ``relation``."""

    split: str
    tie: TieBreak
    edges: tuple[int, ...]
    overall: Bucket
    groups: Mapping[str, tuple[Bucket, ...]] = field(default_factory=dict)

    @property
    def queries(self) -> int:
        return self.overall.queries

    def group(self, name: str) -> dict[str, Bucket]:
        """Buckets of ``name`` ("answer_deg", "query_deg", "cold", "category", "relation") by label."""
        return {b.label: b for b in self.groups[name]}

    def flat(self, prefix: str | None = None) -> dict[str, float]:
        """Metric name -> value for the degree and category buckets, e.g. ``test/answer_deg_0/mrr``,
        ``test/answer_deg_1-3/hits@10``, ``test/query_deg_gt10/queries``, ``test/category_1-N/mrr``.

        ``prefix`` defaults to the split. Empty buckets and relations are left out. The names
        keep "@" as ``EvalResult.flat`` does; ``distmap.track.Tracker`` logs it as "_at_".
        """
        prefix = self.split if prefix is None else prefix
        head = f"{prefix}/" if prefix else ""
        return {
            f"{head}{group}_{b.key}/{m}": float(v)
            for group in METRIC_GROUPS
            for b in self.groups[group]
            for m, v in b.metrics().items()
        }

    def table(self, relations: int | None = None) -> str:
        """A text table (group, bucket, queries, share, MRR, H@1, H@10). ``relations``: how many
        relation rows to show, most queries first (None: all)."""
        shown = {name: list(rows) for name, rows in self.groups.items()}
        hidden = 0
        if relations is not None and len(shown["relation"]) > relations:
            hidden = len(shown["relation"]) - relations
            shown["relation"] = shown["relation"][:relations]
        width = max([6, *(len(b.label) for rows in shown.values() for b in rows)])
        title = dict(GROUPS)
        lines = [
            f"{self.split} split by bucket: {self.queries:,} queries (tail and head), filtered, ties: {self.tie}",
            "degree: train lines an entity occurs in; answer: the entity asked for, query: the one given",
            f"{'group':<14} {'bucket':<{width}} {'queries':>8} {'share':>7} {'MRR':>7} {'H@1':>7} {'H@10':>7}",
            _row("all", self.overall, width),
        ]
        for name, _ in GROUPS:
            for i, b in enumerate(shown[name]):
                lines.append(_row(title[name] if i == 0 else "", b, width))
        if hidden:
            more = f"{hidden:,} more relation{'s' if hidden > 1 else ''}"
            lines.append(f"{'':<14} (+{more}: see the JSON or markdown breakdown)")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The whole table (every relation) as markdown, for the run folder and MLflow."""
        lines = [
            f"# {self.split} split by bucket",
            "",
            f"{self.queries:,} queries (tail and head), filtered, ties: {self.tie}; degree edges "
            f"{','.join(map(str, self.edges))}; degree = train lines an entity occurs in as head or tail; "
            "answer = the entity asked for, query = the entity given.",
            "",
            "| group | bucket | queries | share | MRR | H@1 | H@10 |",
            "|---|---|---:|---:|---:|---:|---:|",
            _md_row("all", self.overall),
        ]
        title = dict(GROUPS)
        lines += [_md_row(title[name], b) for name, _ in GROUPS for b in self.groups[name]]
        return "\n".join(lines) + "\n"

    def to_dict(self, relations: bool = True) -> dict[str, Any]:
        groups = [g for g, _ in GROUPS if relations or g != "relation"]
        return {
            "split": self.split,
            "tie": self.tie,
            "edges": list(self.edges),
            "overall": self.overall.to_dict(),
            "groups": {g: [b.to_dict() for b in self.groups[g]] for g in groups if g in self.groups},
        }

    def to_json(self, relations: bool = True) -> str:
        return json.dumps(self.to_dict(relations), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Breakdown:
        groups = {g: tuple(Bucket.from_dict(b) for b in rows) for g, rows in d["groups"].items()}
        return cls(d["split"], d["tie"], tuple(d["edges"]), Bucket.from_dict(d["overall"]), groups)

    def write(self, folder: Path) -> list[Path]:
        """``breakdown.json`` and ``breakdown.md`` into ``folder``; returns their paths."""
        paths = [folder / BREAKDOWN_JSON, folder / BREAKDOWN_MD]
        paths[0].write_text(self.to_json() + "\n", encoding="utf-8")
        paths[1].write_text(self.markdown(), encoding="utf-8")
        return paths


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _row(group: str, b: Bucket, width: int) -> str:
    return (
        f"{group:<14} {b.label:<{width}} {b.queries:>8,} {b.share:>7.1%} "
        f"{_fmt(b.mrr):>7} {_fmt(b.hits_at_1):>7} {_fmt(b.hits_at_10):>7}"
    )


def _md_row(group: str, b: Bucket) -> str:
    label = b.label.replace("|", "\\|")
    return (
        f"| {group} | {label} | {b.queries:,} | {b.share:.1%} | {_fmt(b.mrr)} | {_fmt(b.hits_at_1)} "
        f"| {_fmt(b.hits_at_10)} |"
    )


def _bucket(label: str, key: str, ranks: np.ndarray, total: int) -> Bucket:
    n = len(ranks)
    if n == 0:
        return Bucket(label, key, 0, 0.0, None, None, None)
    return Bucket(
        label,
        key,
        n,
        n / total if total else 0.0,
        float(np.mean(1.0 / ranks)),
        float(np.mean(ranks <= 1)),
        float(np.mean(ranks <= 10)),
    )


@dataclass(frozen=True)
class _Queries:
    """All 2n queries of a split, tail queries first: relation, query entity, answer, counts."""

    relation: np.ndarray
    query: np.ndarray
    answer: np.ndarray
    gt: np.ndarray
    eq: np.ndarray

    def ranks(self, tie: TieBreak) -> np.ndarray:
        ahead = {"optimistic": 0.0, "pessimistic": 1.0, "realistic": 0.5}[tie]
        return 1.0 + self.gt.astype(np.float64) + ahead * self.eq.astype(np.float64)


def _queries(triples: Tensor | np.ndarray, result: EvalResult) -> _Queries:
    triples = np.asarray(triples.cpu() if isinstance(triples, Tensor) else triples, dtype=np.int64)
    if triples.ndim != 2 or triples.shape[1] != 3:
        raise DistmapError(f"breakdown triples must have shape (n, 3), got {triples.shape}")
    tail, head = result.counts["tail"], result.counts["head"]
    if len(tail) != len(triples) or len(head) != len(triples):
        raise DistmapError(
            f"the evaluation has {len(tail)} tail and {len(head)} head queries for {len(triples)} triples: "
            "give the triples that were evaluated"
        )
    h, r, t = triples.T
    counts = [(c.gt.cpu().numpy(), c.eq.cpu().numpy()) for c in (tail, head)]
    return _Queries(
        relation=np.concatenate([r, r]),
        query=np.concatenate([h, t]),
        answer=np.concatenate([t, h]),
        gt=np.concatenate([counts[0][0], counts[1][0]]).astype(np.int64),
        eq=np.concatenate([counts[0][1], counts[1][1]]).astype(np.int64),
    )


def breakdown(
    triples: Tensor | np.ndarray,
    result: EvalResult,
    train: Tensor | np.ndarray,
    relations: Sequence[str],
    *,
    num_entities: int,
    split: str = "test",
    edges: Sequence[int] = DEFAULT_EDGES,
) -> Breakdown:
    """The breakdown of ``result``, the evaluation of the raw ``triples`` (n, 3) of ``split``, by
    train degree (from ``train``, the train triples as listed), relation category and relation
    (``relations``: names, index = relation id), under ``result.tie``."""
    edges = check_edges(edges, "edges")
    buckets = degree_buckets(edges)
    q = _queries(triples, result)
    ranks = q.ranks(result.tie)
    total = len(ranks)
    degrees = train_degrees(train, num_entities)
    categories = np.asarray(relation_categories(train, len(relations)), dtype=object)

    groups: dict[str, tuple[Bucket, ...]] = {}
    for name, entity in (("answer_deg", q.answer), ("query_deg", q.query)):
        deg = degrees[entity]
        inside = [(deg >= b.lo) & (deg <= b.hi) if b.hi is not None else deg >= b.lo for b in buckets]
        groups[name] = tuple(_bucket(b.label, b.key, ranks[m], total) for b, m in zip(buckets, inside, strict=True))
    seen_answer, seen_query = degrees[q.answer] > 0, degrees[q.query] > 0
    masks = (seen_answer & seen_query, ~seen_answer & seen_query, seen_answer & ~seen_query, ~seen_answer & ~seen_query)
    groups["cold"] = tuple(
        _bucket(label, key, ranks[m], total) for (label, key), m in zip(COLD_BUCKETS, masks, strict=True)
    )
    category = categories[q.relation] if total else np.array([], dtype=object)
    labels = [*CATEGORIES, *([UNSEEN] if (category == UNSEEN).any() else [])]
    groups["category"] = tuple(_bucket(c, c, ranks[category == c], total) for c in labels)
    per_relation = np.bincount(q.relation, minlength=len(relations))
    order = sorted(np.flatnonzero(per_relation).tolist(), key=lambda i: (-per_relation[i], relations[i]))
    by_relation = _split_by(q.relation, ranks)
    groups["relation"] = tuple(_bucket(relations[i], relations[i], by_relation[i], total) for i in order)
    return Breakdown(split, result.tie, edges, _bucket("-", "all", ranks, total), groups)


def _split_by(keys: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """``values`` grouped by integer ``keys`` (one sort, not one mask per key: FB-IMG has 1,231 relations)."""
    if not len(keys):
        return {}
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    parts = np.split(values[order], starts[1:])
    return {int(k): p for k, p in zip(uniq, parts, strict=True)}


def train_triples(kg: KnowledgeGraph) -> Tensor:
    """The dataset's train triples; read from disk when ``kg`` was loaded without them
    (a worker of a ``scale.shard_triples`` run)."""
    expected = kg.manifest["splits"]["train"]["triples"]
    if len(kg.train) == expected:
        return kg.train
    triples, _ = kg.read_triple_rows("train", 0, expected)
    return triples


def breakdown_of(
    kg: KnowledgeGraph, result: EvalResult, split: str = "test", edges: Sequence[int] = DEFAULT_EDGES
) -> Breakdown:
    """``breakdown`` of ``result``, the evaluation of ``kg``'s ``split``."""
    return breakdown(
        kg.splits[split],
        result,
        train_triples(kg),
        kg.relations,
        num_entities=kg.num_entities,
        split=split,
        edges=edges,
    )


# ---------------------------------------------------------------------------------------------
# per-query rows


def query_ranks(kg: KnowledgeGraph, result: EvalResult, split: str = "test") -> pa.Table:
    """One row per query of ``split`` (tail queries, then head queries, each in split order):
    head, relation, tail (names), direction ("tail": t was asked for, "head": h was),
    rank_optimistic, rank_pessimistic (int64), rank_realistic (float64), answer_degree and
    query_degree (train degrees of the entity asked for and of the one given)."""
    triples = kg.splits[split]
    q = _queries(triples, result)
    n = len(triples)
    degrees = train_degrees(train_triples(kg), kg.num_entities)
    ids = np.asarray(triples.cpu(), dtype=np.int64)
    entities, relations = pa.array(kg.entities, pa.string()), pa.array(kg.relations, pa.string())
    both = np.concatenate([ids, ids])
    return pa.table(
        {
            "head": entities.take(both[:, 0]),
            "relation": relations.take(both[:, 1]),
            "tail": entities.take(both[:, 2]),
            "direction": pa.array(["tail"] * n + ["head"] * n, pa.string()),
            "rank_optimistic": pa.array(q.gt + 1, pa.int64()),
            "rank_pessimistic": pa.array(q.gt + q.eq + 1, pa.int64()),
            "rank_realistic": pa.array(q.ranks("realistic"), pa.float64()),
            "answer_degree": pa.array(degrees[q.answer], pa.int64()),
            "query_degree": pa.array(degrees[q.query], pa.int64()),
        }
    )


def write_ranks(path: Path, kg: KnowledgeGraph, result: EvalResult, split: str = "test") -> int:
    """``query_ranks`` to a Parquet file at ``path``; returns the number of rows."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise DistmapError(f"--ranks: expected a .parquet file name, got {path}")
    table = query_ranks(kg, result, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.num_rows


# ---------------------------------------------------------------------------------------------
# from a run folder


def read_breakdown(run_dir: Path) -> Breakdown:
    """The test breakdown ``distmap train`` wrote into the run folder (``breakdown.json``)."""
    path = Path(run_dir) / BREAKDOWN_JSON
    try:
        return Breakdown.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        hint = "no breakdown (trained before distmap wrote one); use `distmap evaluate RUN --breakdown`"
        raise DataError(path, hint) from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(path, f"cannot read the breakdown: {err}") from None


def run_breakdown(
    run_dir: Path,
    split: str = "test",
    edges: Sequence[int] = DEFAULT_EDGES,
    *,
    tie: TieBreak | None = None,
    overrides: Iterable[str] = (),
    progress: bool = False,
) -> tuple[Breakdown, EvalResult]:
    """Re-evaluate a finished run's best model (single or sharded checkpoint) on ``split`` and break
    it down; ``tie`` overrides the run's tie rule, ``overrides`` are ``--set`` strings."""
    from distmap.config import load_config
    from distmap.data.kg import KnowledgeGraph
    from distmap.restore import load_best_model
    from distmap.train.fit import build_filter, evaluate_split, resolve_device

    edges = check_edges(edges)
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", [*overrides, *([f"train.tie={tie}"] if tie else [])])
    kg = KnowledgeGraph.load(cfg.data.path)
    model, _ = load_best_model(run_dir, cfg, kg, resolve_device(cfg.train.device))
    result = evaluate_split(model, kg, split, build_filter(kg, model.relations.device), cfg, progress=progress)
    return breakdown_of(kg, result, split, edges), result


def weighted_mrr(buckets: Iterable[Bucket]) -> float:
    """The count-weighted mean MRR of ``buckets`` (equals the overall MRR for a whole group)."""
    rows = [b for b in buckets if b.queries]
    total = sum(b.queries for b in rows)
    return math.fsum(b.mrr * b.queries for b in rows) / total if total else float("nan")
