"""A run's best-on-valid embeddings as Parquet, to feed to other tools.

``OUT.parquet`` holds one row per entity: ``id`` (int64), ``name`` (string), ``vector``
(fixed-size list of float32). Complex models store each row as [real | imaginary] halves. It is
written one row range at a time, each range one Parquet row group: a range never crosses a stored
part (one row file of a sharded checkpoint) and holds at most ``chunk_rows`` rows, so one process
exports a table far larger than its memory. ``OUT.relations.parquet`` holds the relations,
reciprocal ones included (``reciprocal`` = True, id = r + R, the name of r). The schema metadata
names the run, the model and the best epoch.

With new entities (``distmap.new_entities``: never in the dataset, given by their text and/or visual
rows), their fused rows follow the dataset's N rows, ids N, N + 1, ..., in one last row group, and
a ``new`` column (bool) marks them; they are computed first, so a bad one leaves no output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from torch import Tensor

from distmap.config import Config
from distmap.data.features import Encoder
from distmap.data.kg import name_column
from distmap.data.manifest import parquet_writer, read_manifest, write_parquet
from distmap.errors import DistmapError
from distmap.new_entities import fused_rows, read_new_entities
from distmap.restore import BestCheckpoint, find_best, replicated_model, scored_rows

CHUNK_ROWS = 16384  # rows per read and per row group: 16,384 x 400 floats = 25 MiB (benchmarks/export_memory.py)


@dataclass(frozen=True)
class Exported:
    entities: Path
    relations: Path
    entity_rows: int
    relation_rows: int
    row_groups: int
    dim: int
    epoch: int
    new_rows: int = 0  # new entities appended after the dataset's rows


def relations_path(out: Path) -> Path:
    """``emb.parquet`` -> ``emb.relations.parquet``, beside it."""
    return out.with_name(f"{out.name.removesuffix('.parquet')}.relations.parquet")


def read_ranges(parts: tuple[tuple[int, int], ...], chunk_rows: int) -> Iterator[tuple[int, int]]:
    """Each stored part [a, b) cut into ranges of at most ``chunk_rows`` rows, in row order."""
    for a, b in parts:
        for lo in range(a, b, chunk_rows):
            yield lo, min(lo + chunk_rows, b)


def export_run(
    run_dir: Path,
    cfg: Config,
    out: Path,
    chunk_rows: int = CHUNK_ROWS,
    *,
    new_entities: Path | None = None,
    new_visual: Path | None = None,
    encoder: Encoder | None = None,
    log: Callable[[str], None] = print,
) -> Exported:
    """Write the entity and relation tables of the run's best checkpoint (see the module docstring);
    ``new_entities`` (a TSV: name, text) and ``new_visual`` (.npy) append new entities' rows."""
    if out.suffix != ".parquet":
        raise DistmapError(f"{out}: the output file must end in .parquet")
    if chunk_rows < 1:
        raise DistmapError(f"chunk rows must be positive, got {chunk_rows}")
    if new_visual is not None and new_entities is None:
        raise DistmapError("--new-visual goes with --new-entities FILE.tsv (one row per entity of it)")
    root = Path(cfg.data.path)
    manifest = read_manifest(root)
    best = find_best(run_dir, manifest["num_entities"])
    names = name_column(root, manifest, "entities")
    new_names: tuple[str, ...] = ()
    new_rows = None
    if new_entities is not None:  # first: a bad entity must fail before any output is written
        new = read_new_entities(new_entities, new_visual, names)
        model = replicated_model(best, cfg)
        new_names, new_rows = new.names, fused_rows(model, new, root, cfg.data.modalities, encoder=encoder, log=log)
    metadata = {
        "distmap.run": run_dir.name,
        "distmap.model": cfg.model.name,
        "distmap.rank": str(cfg.model.rank),
        "distmap.best_epoch": str(best.epoch),
        "distmap.dataset": str(root),
    }
    if new_entities is not None:
        metadata["distmap.new_entities"] = str(new_entities)
    out.parent.mkdir(parents=True, exist_ok=True)
    groups, dim = _write_entities(best, cfg, names, out, chunk_rows, metadata, new_names, new_rows)
    relation_names = name_column(root, manifest, "relations").to_pylist()
    relations = _relation_table(best.relations, relation_names).replace_schema_metadata(metadata)
    write_parquet(relations, relations_path(out))
    rows = best.num_entities + len(new_names)
    return Exported(out, relations_path(out), rows, len(relations), groups, dim, best.epoch, len(new_names))


def _write_entities(
    best: BestCheckpoint,
    cfg: Config,
    names: pa.ChunkedArray,
    out: Path,
    chunk_rows: int,
    metadata: dict[str, str],
    new_names: tuple[str, ...] = (),
    new_rows: Tensor | None = None,
) -> tuple[int, int]:
    """Stream the entity rows (a multimodal model's fused rows) range by range, then the new entities'
    rows (``new`` column); returns (row groups written, vector width)."""
    dim = int(scored_rows(best, cfg, 0, min(1, best.num_entities)).shape[1])
    fields = [("id", pa.int64()), ("name", pa.string()), ("vector", pa.list_(pa.float32(), dim))]
    if new_rows is not None:
        fields.append(("new", pa.bool_()))
        if new_rows.shape[1] != dim:
            raise DistmapError(f"new entity rows are {new_rows.shape[1]} wide, the model's rows {dim}")
    schema = pa.schema(fields, metadata=metadata)

    groups = 0
    with parquet_writer(out, schema) as writer:

        def write(lo: int, names: pa.Array | pa.ChunkedArray, vectors: Tensor, new: bool) -> None:
            columns = {"id": pa.array(range(lo, lo + len(vectors)), pa.int64()), "name": names}
            columns["vector"] = _vectors(vectors)
            if new_rows is not None:
                columns["new"] = pa.array([new] * len(vectors), pa.bool_())
            writer.write_table(pa.table(columns, schema=schema), row_group_size=len(vectors))

        for lo, hi in read_ranges(best.parts, chunk_rows):
            write(lo, names.slice(lo, hi - lo), scored_rows(best, cfg, lo, hi), False)  # (hi - lo, dim)
            groups += 1
        if new_rows is not None:
            write(best.num_entities, pa.array(new_names, pa.string()), new_rows, True)
            groups += 1
    return groups, dim


def _relation_table(relations: Tensor, names: list[str]) -> pa.Table:
    """One row per relation of the model (2R: r, then its reciprocal r + R)."""
    count = len(relations)
    return pa.table(
        {
            "id": pa.array(range(count), pa.int64()),
            "name": pa.array([names[i % len(names)] for i in range(count)], pa.string()),
            "reciprocal": pa.array([i >= len(names) for i in range(count)]),
            "vector": _vectors(relations),
        }
    )


def _vectors(rows: Tensor) -> pa.FixedSizeListArray:
    """(n, d) rows -> a fixed-size list<float32>[d] column."""
    flat = rows.detach().to(torch.float32).cpu().contiguous().reshape(-1).numpy()
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), rows.shape[1])
