"""Malformed inputs: every error names the file, the line (where there is one) and the problem, and the
command line prints it as one line."""

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

from distmap.cli import main
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


def prepare_a_file(raw: Path) -> object:
    """`distmap prepare` handed a split file where the raw folder belongs."""
    return prepare_dataset(raw / "train.tsv", raw.parent / "out", log=quiet)


COMMAND_LINES: dict[Callable[[Path], object], Callable[[Path], list[str]]] = {
    prepare: lambda raw: ["prepare", str(raw), str(raw.parent / "out")],
    prepare_a_file: lambda raw: ["prepare", str(raw / "train.tsv"), str(raw.parent / "out")],
}
"""The command line of each Python call the cases run, where it has one."""


def prepared_then(action: Callable[[Path, Path], object]) -> Callable[[Path], object]:
    """Prepare the good toy graph, then run `action(dataset, raw folder)` (a feature step)."""

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


def ones_encoder(texts: list[str]) -> np.ndarray:
    return np.ones((len(texts), 2))


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
        "raw-folder-is-a-file",
        {},
        prepare_a_file,
        "train.tsv",
        None,
        "a file, not a folder; expected a folder holding train, valid and test triples",
    ),
    Case(
        "tsv-and-gz",
        {"train.tsv.gz": gzip.compress(TRAIN.encode())},
        prepare,
        "raw",
        None,
        "both train.tsv and train.tsv.gz exist; keep one",
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


@pytest.mark.parametrize("case", [c for c in CASES if c.run in COMMAND_LINES], ids=lambda c: c.id)
def test_bad_raw_input_is_one_cli_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: Case) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, content in {**GOOD, **case.files}.items():
        if content is not None:
            (raw / name).write_bytes(content.encode() if isinstance(content, str) else content)
    assert main(COMMAND_LINES[case.run](raw)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("distmap prepare: error: ")
    assert case.phrase in err


# ---------------------------------------------------------------- feature files


@dataclass(frozen=True)
class BadFeatures:
    """A feature file (None: absent) imported into the toy dataset, and what the message must say."""

    id: str
    name: str
    content: bytes | None
    phrase: str
    id_column: str | None = None


def parquet(columns: dict[str, object]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def with_value(value: float, row: int, column: int, dtype: type = np.float64) -> np.ndarray:
    matrix = np.ones((3, 4), dtype)
    matrix[row, column] = value
    return matrix


def npz(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, features=array)
    return buffer.getvalue()


VECTORS = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
GOOD_NPY = npy(np.ones((3, 4)))
GOOD_PARQUET = parquet({"vec": VECTORS})

FEATURES = [
    BadFeatures(
        "nan-in-npy",
        "m.npy",
        npy(with_value(np.nan, 1, 2)),
        "NaN at row 1, column 2 (entity 'b'); 1 row(s) with NaN or infinite values (after conversion to float32)",
    ),
    BadFeatures("inf-in-npy", "m.npy", npy(with_value(np.inf, 2, 1)), "inf at row 2, column 1 (entity 'c')"),
    BadFeatures("minus-inf-in-npy", "m.npy", npy(with_value(-np.inf, 0, 3)), "-inf at row 0, column 3 (entity 'a')"),
    BadFeatures(
        "too-large-for-float32",
        "m.npy",
        npy(with_value(1e39, 1, 0)),
        "1e+39 (beyond float32's range, infinite once converted) at row 1, column 0 (entity 'b')",
    ),
    BadFeatures(
        "inf-in-parquet",
        "f.parquet",
        parquet({"vec": [[1.0, 2.0], [3.0, -float("inf")], [5.0, 6.0]]}),
        "-inf at row 1, column 1 (entity 'b')",
    ),
    BadFeatures(
        "wrong-row-count", "m.npy", npy(np.ones((5, 4))), "wrong row count: 5 rows but the dataset has 3 entities"
    ),
    BadFeatures(
        "object-npy",
        "m.npy",
        npy(np.array([[1, "x"], [2, "y"], [3, "z"]], dtype=object)),
        "object array or pickled data (would need pickle, which is refused)",
    ),
    BadFeatures(
        "string-npy",
        "m.npy",
        npy(np.array([["a", "b"], ["c", "d"], ["e", "f"]])),
        "dtype <U1 is not numeric; expected float or integer values",
    ),
    BadFeatures(
        "1-d-npy", "m.npy", npy(np.ones(3)), "expected a 2-D (entities, dim) array with dim >= 1, got shape (3,)"
    ),
    BadFeatures(
        "3-d-npy",
        "m.npy",
        npy(np.ones((3, 2, 2))),
        "expected a 2-D (entities, dim) array with dim >= 1, got shape (3, 2, 2)",
    ),
    BadFeatures(
        "1-d-parquet",
        "f.parquet",
        parquet({"vec": [1.0, 2.0, 3.0]}),
        "expected exactly one list column of feature values (a list of numbers per row: a 2-D matrix), found none; "
        "columns: vec (double)",
    ),
    BadFeatures(
        "3-d-parquet",
        "f.parquet",
        parquet({"vec": [[[1.0], [2.0]]] * 3}),
        "column 'vec' holds nested lists (list<element: double>), a 3-D or deeper array",
    ),
    BadFeatures(
        "ragged-parquet",
        "f.parquet",
        parquet({"vec": [[1.0, 2.0], [3.0, 4.0], [5.0]]}),
        "rows have different lengths: row 0 has 2, row 2 has 1",
    ),
    BadFeatures(
        "null-row", "f.parquet", parquet({"vec": [[1.0, 2.0], None, [5.0, 6.0]]}), "row 1: column 'vec' is null"
    ),
    BadFeatures(
        "null-element",
        "f.parquet",
        parquet({"vec": [[1.0, 2.0], [3.0, 4.0], [5.0, None]]}),
        "row 2: column 'vec' holds a null value",
    ),
    BadFeatures(
        "string-values",
        "f.parquet",
        parquet({"vec": [["x", "y"]] * 3}),
        "column 'vec' holds string values; expected float or integer values",
    ),
    BadFeatures(
        "missing-id-column",
        "f.parquet",
        GOOD_PARQUET,
        "id column 'entity' not found; columns: ['vec']",
        id_column="entity",
    ),
    BadFeatures(
        "integer-ids",
        "f.parquet",
        parquet({"entity": [0, 1, 2], "vec": VECTORS}),
        "id column 'entity' must hold entity names (strings), found int64",
        id_column="entity",
    ),
    BadFeatures(
        "id-column-is-the-features",
        "f.parquet",
        GOOD_PARQUET,
        "id column 'vec' must hold entity names (strings), found list<element: double>",
        id_column="vec",
    ),
    BadFeatures(
        "null-id",
        "f.parquet",
        parquet({"entity": ["a", None, "c"], "vec": VECTORS}),
        "row 1: null entity name in 'entity'",
        id_column="entity",
    ),
    BadFeatures(
        "unknown-id",
        "f.parquet",
        parquet({"entity": ["a", "zz", "b"], "vec": VECTORS}),
        "1 row(s) name entities not in the dataset, e.g. ['zz']",
        id_column="entity",
    ),
    BadFeatures(
        "duplicate-id",
        "f.parquet",
        parquet({"entity": ["a", "b", "a"], "vec": VECTORS}),
        "duplicate entity names: 1 entities have several rows, e.g. ['a']",
        id_column="entity",
    ),
    BadFeatures(
        "id-column-with-npy",
        "m.npy",
        GOOD_NPY,
        "--id-column (id_column) applies to .parquet files only; .npy rows are in sorted-entity order",
        id_column="entity",
    ),
    BadFeatures("missing-npy", "m.npy", None, "file not found"),
    BadFeatures("missing-parquet", "f.parquet", None, "file not found"),
    BadFeatures("empty-npy", "m.npy", b"", "empty file; expected a .npy array saved with np.save"),
    BadFeatures(
        "garbage-npy",
        "m.npy",
        b"not an array at all\n" * 8,
        "not a .npy file (no .npy header at its start); save one numeric array with np.save",
    ),
    BadFeatures(
        "npz-as-npy",
        "m.npy",
        npz(np.ones((3, 4))),
        "not a .npy file (an .npz archive); save one numeric array with np.save",
    ),
    BadFeatures(
        "truncated-npy-header", "m.npy", GOOD_NPY[:20], "corrupt or truncated .npy file (EOF: reading array header"
    ),
    BadFeatures("truncated-npy-data", "m.npy", GOOD_NPY[:-8], "corrupt or truncated .npy file ("),
    BadFeatures(
        "garbage-parquet",
        "f.parquet",
        b"not a table at all\n" * 8,
        "unreadable Parquet file (Could not open Parquet input source",
    ),
    BadFeatures(
        "truncated-parquet",
        "f.parquet",
        GOOD_PARQUET[: len(GOOD_PARQUET) // 2],
        "unreadable Parquet file (Could not open Parquet input source",
    ),
    BadFeatures("unsupported-extension", "m.csv", b"1,2\n", "unsupported feature file type '.csv'; accepted: .npy"),
]


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good toy graph (entities a, b, c), prepared once: every import below fails before writing."""
    raw = tmp_path_factory.mktemp("toy") / "raw"
    raw.mkdir()
    for name, content in GOOD.items():
        (raw / name).write_text(content)
    prepare(raw)
    return raw.parent / "out"


def feature_file(folder: Path, case: BadFeatures) -> Path:
    path = folder / case.name
    if case.content is not None:
        path.write_bytes(case.content)
    return path


@pytest.mark.parametrize("case", FEATURES, ids=lambda c: c.id)
def test_bad_feature_file_is_named(tmp_path: Path, toy_dataset: Path, case: BadFeatures) -> None:
    path = feature_file(tmp_path, case)
    with pytest.raises(DataError) as caught:
        import_features(toy_dataset, "visual", path, id_column=case.id_column, log=quiet)
    assert caught.value.path == str(path)
    assert caught.value.line is None
    assert str(caught.value).startswith(f"{path}: ")
    assert case.phrase in str(caught.value)


@pytest.mark.parametrize("case", FEATURES, ids=lambda c: c.id)
def test_bad_feature_file_is_one_cli_line(
    tmp_path: Path, toy_dataset: Path, capsys: pytest.CaptureFixture[str], case: BadFeatures
) -> None:
    path = feature_file(tmp_path, case)
    argv = ["features", "import", str(toy_dataset), "--modality", "visual", "--file", str(path)]
    assert main(argv + (["--id-column", case.id_column] if case.id_column else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"distmap features: error: {path}: ")
    assert case.phrase in err
    assert not (toy_dataset / "features").exists()
