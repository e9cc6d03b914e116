"""Ask a trained model which entities complete (h, r, ?) or (?, r, t), best first, by name.

Head queries (?, r, t) are asked as (t, r + R, ?) on reciprocal relations, as the evaluator asks
them. Scores come from the model's own ``score(h, r, lo, hi)``, one entity chunk at a time with a
running top-k, so a batch of B queries never holds more than B x (chunk + k) scores. Known marks
and a candidate's filtered rank use the evaluator's filter index and counting (``count_chunk``,
``RankCounts.ranks``) under the run's tie rule, so they agree with ``distmap evaluate``.

Entities are shown by id with a readable label beside it where the dataset keeps one (the first
text column of the text ``distmap features text`` embedded, e.g. WN9-IMG's lemmas), by id alone
where it keeps none.

New entities (``distmap.new_entities``: never in the dataset, given by their features) are asked
about through the rows the model fuses for them, ids N, N + 1, ... after the dataset's N entities;
they have no known triples and are never candidates.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from torch import Tensor

from distmap.data.features import EntityLabels, read_labels
from distmap.data.kg import KnowledgeGraph, add_reciprocals
from distmap.data.manifest import parquet_writer
from distmap.data.prepare import SPLITS
from distmap.data.tsv import TsvReader
from distmap.errors import DataError, DistmapError
from distmap.models.model import KGEModel
from distmap.train.evaluate import FilterIndex, RankCounts, TieBreak, count_chunk
from distmap.train.fit import build_filter

ASKED = "?"  # the field of a query file that marks the entity asked for
QUERY_COLUMNS = ("head", "relation", "tail")
CHUNK_ROWS = 16384  # entities scored at a time: a batch of 256 queries holds 256 x 16384 scores
BATCH_QUERIES = 256
CLOSE_NAMES = 3
LABEL_WIDTH = 40  # a longer label is cut to this many characters, the last one an ellipsis
ROW_SCHEMA = pa.schema(
    [
        ("query", pa.int64()),  # the query's row in the queries file, from 0 (blank lines not counted)
        ("rank", pa.int32()),  # 1 = best score
        ("entity", pa.string()),
        ("score", pa.float32()),
        ("known", pa.string()),  # the first split holding (query, entity) as a true triple, else null
    ]
)


@dataclass(frozen=True)
class Query:
    """A query as the model asks it, (entity, relation, ?): (?, r, t) is (t, r + R, ?)."""

    entity: int
    relation: int


@dataclass(frozen=True)
class TopK:
    """The k best entities of each of B queries: ids, scores (both (B, k), best first) and known marks."""

    ids: Tensor  # (B, k) int64 entity ids
    scores: Tensor  # (B, k) float
    known: Tensor  # (B, k) int64: index into SPLITS of the first split that holds the triple, -1 if none


class Predictor:
    """A run's best model with what answering needs: name lookups, the filter per split, the tie rule.

    ``new_names`` and ``new_rows`` (k, d'), the fused rows of new entities (``new_entities.fused_rows``),
    add k query entities, ids N to N + k - 1, that are never candidates.
    """

    def __init__(
        self,
        model: KGEModel,
        kg: KnowledgeGraph,
        tie: TieBreak,
        chunk_size: int = CHUNK_ROWS,
        new_names: Sequence[str] = (),
        new_rows: Tensor | None = None,
    ) -> None:
        if chunk_size < 1:
            raise DistmapError(f"chunk size must be positive, got {chunk_size}")
        if len(new_names) != (0 if new_rows is None else len(new_rows)):
            raise ValueError(f"{len(new_names)} new entity names for {0 if new_rows is None else len(new_rows)} rows")
        self.model, self.kg, self.tie, self.chunk_size = model.eval(), kg, tie, chunk_size
        self.new_names = tuple(new_names)
        with torch.no_grad():  # a multimodal model's fused rows, computed once rather than per scored chunk
            self.score = model.scorer() if new_rows is None else self._scorer_with(new_rows)
        self.entity_ids = {name: i for i, name in enumerate(kg.entities)}
        for i, name in enumerate(self.new_names):
            if name in self.entity_ids:
                raise DistmapError(f"new entity '{name}' is already an entity of the dataset (or given twice)")
            self.entity_ids[name] = kg.num_entities + i
        self.relation_ids = {name: i for i, name in enumerate(kg.relations)}
        self.labels: EntityLabels | None = read_labels(kg.root)
        device = model.relations.device
        self.filter_index = build_filter(kg, device)  # the evaluator's: train + valid + test, both directions
        self.by_split = {
            split: FilterIndex.build(add_reciprocals(kg.splits[split], kg.num_relations).to(device), kg.num_entities)
            for split in SPLITS
        }

    def _scorer_with(self, new_rows: Tensor) -> Callable[[Tensor, Tensor, int, int], Tensor]:
        """``model.scorer()``'s score, its query rows extended by the new entities' (ids N, N + 1, ...).

        The same operations as the model's scorer on the same fused rows, so a dataset entity scores
        as it does there; ids N and above take their rows from ``new_rows`` (the filter index knows
        no key that large, so they have no known answers).
        """
        model, n = self.model, self.kg.num_entities
        rows = model.views().fused  # the whole table: a predictor's model holds all N rows
        if new_rows.shape[1] != rows.shape[1]:
            raise DistmapError(f"new entity rows are {new_rows.shape[1]} wide, the model's fused rows {rows.shape[1]}")
        new_rows = new_rows.to(rows.device, rows.dtype)

        def score(h: Tensor, r: Tensor, a: int, b: int) -> Tensor:
            seen = h < n
            query = rows.new_empty(len(h), rows.shape[1])
            query[seen] = rows[h[seen]]
            query[~seen] = new_rows[h[~seen] - n]
            return model.interaction.score(model.interaction.query(query, model.relations[r]), rows[a:b])

        return score

    def entity(self, name: str) -> int:
        """The id of an entity to ask about: a dataset entity or a new one."""
        return _lookup(self.entity_ids, name, "entity")

    def answer(self, name: str) -> int:
        """The id of a dataset entity to rank as an answer (``--candidate``): new entities are not candidates."""
        found = self.entity(name)
        if found >= self.kg.num_entities:
            raise DistmapError(f"'{name}' is a new entity: new entities are asked about, never ranked as answers")
        return found

    def name(self, entity: int) -> str:
        n = self.kg.num_entities
        return self.kg.entities[entity] if entity < n else self.new_names[entity - n]

    def label(self, entity: int) -> str | None:
        """The dataset's label of an entity, None where it has none (or is new)."""
        if self.labels is None or entity >= self.kg.num_entities:
            return None
        return self.labels.labels[entity]

    def query(self, *, head: str | None, relation: str, tail: str | None) -> Query:
        """(head, relation, ?) when ``tail`` is None, (?, relation, tail) when ``head`` is None."""
        if (head is None) == (tail is None):
            raise DistmapError("give exactly one of head and tail: the other one is asked for")
        r = _lookup(self.relation_ids, relation, "relation")
        if tail is None:
            return Query(self.entity(head), r)
        return Query(self.entity(tail), r + self.kg.num_relations)

    def describe(self, query: Query) -> str:
        """The query in names, as a user wrote it: ``(h, r, ?)`` or ``(?, r, t)``."""
        entity, num_relations = self.name(query.entity), self.kg.num_relations
        if query.relation < num_relations:
            return f"({entity}, {self.kg.relations[query.relation]}, ?)"
        return f"(?, {self.kg.relations[query.relation - num_relations]}, {entity})"

    @torch.no_grad()
    def top_k(self, queries: Sequence[Query], k: int) -> TopK:
        """The k best-scoring entities of each query, ties in entity id order (a stable argsort of all scores)."""
        if k < 1:
            raise DistmapError(f"k must be positive, got {k}")
        h, r = self._tensors(queries)
        k = min(k, self.kg.num_entities)
        scores = torch.empty(len(h), 0, device=h.device)
        ids = torch.empty(len(h), 0, dtype=torch.long, device=h.device)
        for lo, hi in self._chunks():
            chunk = self.score(h, r, lo, hi)  # (B, hi - lo)
            _refuse_nan(chunk)
            # the kept ids are all below lo and come first, so a stable sort keeps ties in id order
            merged = torch.cat([scores, chunk], dim=1)
            merged_ids = torch.cat([ids, torch.arange(lo, hi, device=h.device).expand(len(h), -1)], dim=1)
            order = merged.argsort(dim=1, descending=True, stable=True)[:, :k]
            scores, ids = merged.gather(1, order), merged_ids.gather(1, order)
        return TopK(ids, scores, self.known(queries, ids))

    def known(self, queries: Sequence[Query], ids: Tensor) -> Tensor:
        """(B, k) marks of the (query, entity) pairs: index into SPLITS of the first split holding them, -1 if none."""
        h, r = self._tensors(queries)
        n = self.kg.num_entities
        pairs = torch.arange(len(h), device=ids.device)[:, None] * n + ids  # (B, k) keys query * N + entity
        marks = torch.full_like(ids, -1)
        for index in reversed(range(len(SPLITS))):  # the earliest split's mark is written last
            rows, cols = self.by_split[SPLITS[index]].answers(h, r, 0, n)
            marks[torch.isin(pairs, rows.to(ids.device) * n + cols.to(ids.device))] = index
        return marks

    def split_of(self, query: Query, entity: int) -> str | None:
        """The first split holding (query, entity) as a true triple, None if none holds it."""
        mark = int(self.known([query], torch.tensor([[entity]], device=self.model.relations.device))[0, 0])
        return SPLITS[mark] if mark >= 0 else None

    @torch.no_grad()
    def candidate(self, query: Query, entity: int) -> tuple[float, float]:
        """(score, filtered rank) of one answer: ranked against every entity but the other known answers.

        The evaluator's counting: an answer that is not a known triple is filtered out of its own
        comparison as the evaluator filters its target, and ties count by the run's tie rule.
        """
        h, r = self._tensors([query])
        start = entity - entity % self.chunk_size
        target = self.score(h, r, start, min(start + self.chunk_size, self.kg.num_entities))[:, entity - start]
        zeros = torch.zeros(1, dtype=torch.long, device=h.device)
        counts = RankCounts(zeros, zeros)
        for lo, hi in self._chunks():
            chunk = self.score(h, r, lo, hi)
            _refuse_nan(chunk)
            rows, cols = (x.to(h.device) for x in self.filter_index.answers(h, r, lo, hi))
            if lo <= entity < hi and not (cols == entity - lo).any():
                rows, cols = torch.cat([rows, zeros]), torch.cat([cols, zeros + entity - lo])
            counts = counts + count_chunk(chunk, target, rows, cols)
        return float(target), float(counts.ranks(self.tie))

    def rows(self, first: int, queries: Sequence[Query], found: TopK) -> pa.Table:
        """``ROW_SCHEMA`` rows of a batch whose first query is number ``first`` of the file."""
        b, k = found.ids.shape
        known = [SPLITS[m] if m >= 0 else None for m in found.known.flatten().tolist()]
        return pa.table(
            {
                "query": pa.array(torch.arange(first, first + b).repeat_interleave(k).numpy()),
                "rank": pa.array(torch.arange(1, k + 1, dtype=torch.int32).repeat(b).numpy()),
                "entity": pa.array([self.kg.entities[i] for i in found.ids.flatten().tolist()], pa.string()),
                "score": pa.array(found.scores.float().flatten().cpu().numpy()),
                "known": pa.array(known, pa.string()),
            },
            schema=ROW_SCHEMA,
        )

    def table(self, found: TopK, row: int = 0) -> str:
        """The top-k of query ``row`` as a text table: rank, entity (and its label, where the dataset
        keeps labels), score, known split."""
        ids = found.ids[row].tolist()
        names = [self.kg.entities[i] for i in ids]
        width = max(24, *(len(name) for name in names)) if names else 24
        labels = [shorten(self.label(i) or "-") for i in ids] if self.labels is not None else None
        label_width = max(5, *(len(label) for label in labels)) if labels else 0
        entity = f"{'entity':<{width}}" + (f"  {'label':<{label_width}}" if labels else "")
        lines = [f"{'rank':>4}  {entity} {'score':>10}  known"]
        columns = (names, found.scores[row].tolist(), found.known[row].tolist())
        for rank, (name, score, mark) in enumerate(zip(*columns, strict=True), start=1):
            entity = f"{name:<{width}}" + (f"  {labels[rank - 1]:<{label_width}}" if labels else "")
            lines.append(f"{rank:>4}  {entity} {score:>10.4f}  {SPLITS[mark] if mark >= 0 else '-'}")
        return "\n".join(lines)

    def _tensors(self, queries: Sequence[Query]) -> tuple[Tensor, Tensor]:
        device = self.model.relations.device
        h = torch.tensor([q.entity for q in queries], dtype=torch.long, device=device)
        r = torch.tensor([q.relation for q in queries], dtype=torch.long, device=device)
        return h, r

    def _chunks(self) -> Iterator[tuple[int, int]]:
        n = self.kg.num_entities
        for lo in range(0, n, self.chunk_size):
            yield lo, min(lo + self.chunk_size, n)


def predict_file(predictor: Predictor, queries_file: Path, out: Path, k: int, batch_size: int = BATCH_QUERIES) -> int:
    """Top-k rows of every query in a TSV file (head, relation, tail; ``?`` for the one asked for)
    into ``out`` (.parquet or .tsv), a batch at a time; returns the number of queries.

    Written under a temporary name and renamed when complete: a bad line leaves no partial output.
    """
    if batch_size < 1:
        raise DistmapError(f"batch size must be positive, got {batch_size}")
    count = 0
    with row_writer(out) as write:
        batch: list[Query] = []
        for number, (head, relation, tail) in TsvReader(queries_file, QUERY_COLUMNS):
            if (head == ASKED) == (tail == ASKED):
                raise DataError(queries_file, f"exactly one of head and tail must be '{ASKED}'", number)
            try:
                batch.append(
                    predictor.query(
                        head=None if head == ASKED else head, relation=relation, tail=None if tail == ASKED else tail
                    )
                )
            except DistmapError as err:
                raise DataError(queries_file, str(err), number) from None
            if len(batch) == batch_size:
                write(predictor.rows(count, batch, predictor.top_k(batch, k)))
                count, batch = count + len(batch), []
        if batch:
            write(predictor.rows(count, batch, predictor.top_k(batch, k)))
            count += len(batch)
    return count


@contextmanager
def row_writer(path: Path) -> Iterator[Callable[[pa.Table], None]]:
    """``write(table)`` of ``ROW_SCHEMA`` tables into a Parquet file (a row group per table) or a TSV
    file with a header, chosen by the suffix; the file appears only once complete."""
    if path.suffix not in (".parquet", ".tsv"):
        raise DistmapError(f"{path}: the output file must end in .parquet or .tsv")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        with parquet_writer(path, ROW_SCHEMA) as writer:
            yield writer.write_table
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as stream:
            stream.write("\t".join(ROW_SCHEMA.names) + "\n")

            def write(table: pa.Table) -> None:
                columns = (table.column(c).to_pylist() for c in ROW_SCHEMA.names)
                for query, rank, entity, score, known in zip(*columns, strict=True):
                    stream.write(f"{query}\t{rank}\t{entity}\t{score:.7g}\t{known or ''}\n")

            yield write
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def shorten(label: str, width: int = LABEL_WIDTH) -> str:
    """A label cut to ``width`` characters, the last one an ellipsis where it was longer."""
    return label if len(label) <= width else label[: width - 1] + "\u2026"


def _lookup(ids: dict[str, int], name: str, kind: str) -> int:
    """Exact match, else a one-line error with the closest names."""
    found = ids.get(name)
    if found is not None:
        return found
    close = difflib.get_close_matches(name, ids, n=CLOSE_NAMES)
    hint = f"closest: {', '.join(close)}" if close else "no close names"
    raise DistmapError(f"unknown {kind} '{name}' ({hint})")


def _refuse_nan(scores: Tensor) -> None:
    """NaN sorts above every score, so it would top every list; refuse it as the evaluator does."""
    if scores.isnan().any():
        raise DistmapError("the model produced NaN scores; its checkpoint is not usable")
