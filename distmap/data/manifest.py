"""The dataset directory's manifest and checksummed Parquet files.

Shared by prepare (writes), the loader and the feature shards (read, verify, update).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distmap.errors import DataError

FORMAT_VERSION = "distmap-dataset/1"
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """Checksums let a loader detect a dataset edited or half-copied after prepare."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dataset directory (DataError if there is none)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DataError(root, "dataset directory not found; run `distmap prepare` first")
    if not path.is_file():
        raise DataError(path, "manifest not found; is this a prepared dataset directory?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise DataError(path, f"not a {FORMAT_VERSION} manifest")
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically: readers see the old one or the new one, never half.

    The temporary file is created like every other file of the dataset (mode from the umask, as
    open() does), not 0600 as `tempfile.mkstemp` makes it; the pid keeps two writers apart.
    """
    tmp = root / f".{MANIFEST}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as stream:
        json.dump(manifest, stream, indent=2, ensure_ascii=False)
        stream.write("\n")
    os.replace(tmp, root / MANIFEST)


def write_parquet(table: pa.Table, path: Path, row_group_size: int | None = None) -> str:
    """Write via a temporary name (a crash never leaves a truncated file); return its sha256."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=row_group_size)
    os.replace(tmp, path)
    return sha256_file(path)


@contextmanager
def parquet_writer(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """Stream tables (each a row group) into ``path`` via a temporary name: a failure midway leaves
    no truncated file, and the table never has to be whole in memory."""
    tmp = path.with_name(f".{path.name}.tmp")
    writer = pq.ParquetWriter(tmp, schema)
    try:
        yield writer
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, path)
