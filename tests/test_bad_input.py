"""Malformed inputs: every error names the file, the line (where there is one) and the problem."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distmap.data.features import embed_text, import_features
from distmap.data.prepare import prepare_dataset
from distmap.errors import DataError

TRAIN = "b\tlikes\ta\nc\tknows\tb\na\tlikes\tc\n"
GOOD = {"train.tsv": TRAIN, "valid.tsv": "a\tknows\tc\n", "test.tsv": "c\tlikes\tb\n"}


def quiet(_: str) -> None:
    """A log that swallows notes: these tests look at the errors only."""


@dataclass(frozen=True)
class Case:
    """Raw files (None removes one), what to run on them, and what the message must say."""

    id: str
    files: dict[str, str | bytes | None]
    run: Callable[[Path], object]
    file: str
    line: int | None
    phrase: str


def prepare(raw: Path) -> object:
    return prepare_dataset(raw, raw.parent / "out", log=quiet)


def prepared_then(action: Callable[[Path, Path], object]) -> Callable[[Path], object]:
    """Prepare the good toy graph, then run `action(dataset, raw folder)` (a feature import)."""

    def run(raw: Path) -> object:
        prepare(raw)
        return action(raw.parent / "out", raw)

    return run


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def truncated_gzip() -> bytes:
    lines = "".join(f"e{i}\tr{i % 7}\te{(i * 31) % 997}\n" for i in range(20000)).encode()
    data = gzip.compress(lines)
    return data[: len(data) // 2]


def named_rows_parquet(path: Path, names: list[str]) -> None:
    values = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(2 * len(names), np.float32)), 2)
    pq.write_table(pa.table({"entity": names, "vec": values}), path)


def import_named_rows(names: list[str]) -> Callable[[Path], object]:
    def action(out: Path, raw: Path) -> object:
        named_rows_parquet(raw / "named.parquet", names)
        return import_features(out, "visual", raw / "named.parquet", id_column="entity", log=quiet)

    return prepared_then(action)


def ones_encoder(texts: list[str]) -> np.ndarray:
    return np.ones((len(texts), 2))


NAN_ROW = np.ones((3, 4))
NAN_ROW[1, 2] = np.nan

CASES = [
    Case(
        "column-count",
        {"train.tsv": TRAIN + "a\tlikes\n"},
        prepare,
        "train.tsv",
        4,
        "expected 3 tab-separated columns (head, relation, tail), found 2",
    ),
    Case("space-separated", {"valid.tsv": "a knows c\n"}, prepare, "valid.tsv", 1, "looks space-separated"),
    Case("empty-field", {"test.tsv": "c\t\tb\n"}, prepare, "test.tsv", 1, "empty relation field (column 2)"),
    Case(
        "whitespace-only-field",
        {"train.tsv": TRAIN + "a\t \tb\n"},
        prepare,
        "train.tsv",
        4,
        "whitespace-only relation field (column 2)",
    ),
    Case(
        "trailing-whitespace",
        {"train.tsv": "b \tlikes\ta\n"},
        prepare,
        "train.tsv",
        1,
        "leading/trailing whitespace in head field (column 1)",
    ),
    Case("bad-utf8", {"train.tsv": TRAIN.encode() + b"a\tlik\xffes\tb\n"}, prepare, "train.tsv", 4, "invalid UTF-8"),
    Case(
        "header-row",
        {"test.tsv": "head\trelation\ttail\nc\tlikes\tb\n"},
        prepare,
        "test.tsv",
        1,
        "looks like a header row (head, relation, tail), not a triple; use --skip-header",
    ),
    Case("nul-byte", {"valid.tsv": b"a\tknows\tc\x00\n"}, prepare, "valid.tsv", 1, "NUL byte"),
    Case(
        "missing-split",
        {"test.tsv": None},
        prepare,
        "raw",
        None,
        "missing split 'test': expected test.tsv or test.tsv.gz",
    ),
    Case("empty-split", {"valid.tsv": "\n"}, prepare, "valid.tsv", None, "split 'valid' is empty"),
    Case(
        "truncated-gzip",
        {"train.tsv": None, "train.tsv.gz": truncated_gzip()},
        prepare,
        "train.tsv.gz",
        None,
        "corrupt or truncated gzip",
    ),
    Case(
        "not-gzip", {"train.tsv": None, "train.tsv.gz": TRAIN}, prepare, "train.tsv.gz", 1, "corrupt or truncated gzip"
    ),
    Case(
        "bad-entities-header",
        {"entities.tsv": "name\tid\na\t0\n"},
        prepare,
        "entities.tsv",
        1,
        "the first column must be 'entity', found 'name'",
    ),
    Case(
        "duplicate-listed-entity",
        {"entities.tsv": "entity\na\nb\na\n"},
        prepare,
        "entities.tsv",
        4,
        "duplicate entity 'a' (first on line 2)",
    ),
    Case(
        "duplicate-text-entity",
        {"text.tsv": "entity\tname\na\tAy\nb\tBee\na\tAgain\n"},
        prepared_then(lambda out, raw: embed_text(out, raw / "text.tsv", encoder=ones_encoder, log=quiet)),
        "text.tsv",
        4,
        "duplicate entity 'a' (first on line 2)",
    ),
    Case(
        "nan-in-npy",
        {"m.npy": npy(NAN_ROW)},
        prepared_then(lambda out, raw: import_features(out, "visual", raw / "m.npy", log=quiet)),
        "m.npy",
        None,
        "NaN or infinite value (after conversion to float32) in row 1 (entity 'b')",
    ),
    Case(
        "wrong-row-count",
        {"m.npy": npy(np.ones((5, 4)))},
        prepared_then(lambda out, raw: import_features(out, "visual", raw / "m.npy", log=quiet)),
        "m.npy",
        None,
        "wrong row count: 5 rows but the dataset has 3 entities",
    ),
    Case(
        "object-npy",
        {"m.npy": npy(np.array([[1, "x"], [2, "y"], [3, "z"]], dtype=object))},
        prepared_then(lambda out, raw: import_features(out, "visual", raw / "m.npy", log=quiet)),
        "m.npy",
        None,
        "object array or pickled data (would need pickle, which is refused)",
    ),
    Case(
        "string-npy",
        {"m.npy": npy(np.array([["a", "b"], ["c", "d"], ["e", "f"]]))},
        prepared_then(lambda out, raw: import_features(out, "visual", raw / "m.npy", log=quiet)),
        "m.npy",
        None,
        "dtype <U1 is not numeric; expected float or integer values",
    ),
    Case(
        "unsupported-extension",
        {"m.csv": "1,2\n"},
        prepared_then(lambda out, raw: import_features(out, "visual", raw / "m.csv", log=quiet)),
        "m.csv",
        None,
        "unsupported feature file type '.csv'; accepted: .npy",
    ),
    Case(
        "unknown-id",
        {},
        import_named_rows(["a", "zz", "b"]),
        "named.parquet",
        None,
        "1 row(s) name entities not in the dataset, e.g. ['zz']",
    ),
    Case(
        "duplicate-id",
        {},
        import_named_rows(["a", "b", "a"]),
        "named.parquet",
        None,
        "duplicate entity names: 1 entities have several rows, e.g. ['a']",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_located_and_named(tmp_path: Path, case: Case) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, content in {**GOOD, **case.files}.items():
        if content is not None:
            (raw / name).write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(DataError) as caught:
        case.run(raw)
    message = str(caught.value)
    assert Path(caught.value.path).name == case.file
    assert case.file in message
    assert case.phrase in message
    if case.line is not None:
        assert f"{case.file}:{case.line}: " in message
        assert caught.value.line == case.line


def test_truncated_gzip_names_the_line_where_it_was_detected(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, content in {**GOOD, "train.tsv.gz": truncated_gzip()}.items():
        if name != "train.tsv":
            (raw / name).write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(DataError) as caught:
        prepare(raw)
    assert caught.value.line is not None
    assert caught.value.line > 1
    assert f"train.tsv.gz:{caught.value.line}: " in str(caught.value)
