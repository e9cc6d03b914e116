"""Entity feature shards: `features/<modality>/part-XXXXX.parquet`, each a contiguous row range.

A worker owning entity rows [lo, hi) reads only the parts overlapping that range. Rows
without a feature are stored as zeros with `present = False` and must never be used.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distmap.data.manifest import (
    read_manifest,
    sha256_file,
    write_manifest,
    write_parquet,
)
from distmap.errors import DataError, DistmapError

FEATURES_DIR = "features"
_MODALITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class FeatureBlock:
    """Feature rows [lo, hi): `values[i]` is meaningful only where `mask[i]` is True."""

    lo: int
    hi: int
    values: np.ndarray
    mask: np.ndarray
    parts_read: tuple[str, ...]


def write_feature_shards(
    dataset_root: str | Path,
    modality: str,
    values: np.ndarray,
    mask: np.ndarray,
    *,
    rows_per_part: int = 4096,
    source: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write (N, D) features for all N entities, replacing the modality; return its manifest entry."""
    root = Path(dataset_root)
    manifest = read_manifest(root)
    values, mask = _checked_arrays(values, mask, manifest["num_entities"])
    check_modality_name(modality)
    if rows_per_part < 1:
        raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part}")
    features = root / FEATURES_DIR
    staging = features / f".{modality}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    parts = [
        _write_part(staging, index, values, mask, lo, min(lo + rows_per_part, len(values)))
        for index, lo in enumerate(range(0, len(values), rows_per_part))
    ]
    _replace_dir(staging, features / modality)
    entry = {
        "dim": int(values.shape[1]),
        "rows": len(values),
        "present": int(mask.sum()),
        "rows_per_part": rows_per_part,
        "parts": parts,
        "source": source,
        **(extra or {}),
    }
    manifest["features"][modality] = entry
    write_manifest(root, manifest)
    return entry


class FeatureShards:
    """Reader of one modality's shards; `read(lo, hi)` opens only the parts it needs."""

    def __init__(self, dataset_root: str | Path, modality: str, *, verify: bool = True) -> None:
        self.root = Path(dataset_root)
        self.modality = modality
        self.verify = verify
        available = read_manifest(self.root)["features"]
        if modality not in available:
            names = ", ".join(sorted(available)) or "none"
            raise DataError(self.root / "manifest.json", f"no feature modality '{modality}'; available: {names}")
        self.entry: dict[str, Any] = available[modality]

    @property
    def dim(self) -> int:
        return int(self.entry["dim"])

    @property
    def num_rows(self) -> int:
        return int(self.entry["rows"])

    def read(self, lo: int, hi: int) -> FeatureBlock:
        """Rows [lo, hi) as a float32 (hi - lo, dim) array plus their presence mask."""
        if not 0 <= lo <= hi <= self.num_rows:
            raise IndexError(f"row range [{lo}, {hi}) outside [0, {self.num_rows})")
        values = np.zeros((hi - lo, self.dim), dtype=np.float32)
        mask = np.zeros(hi - lo, dtype=bool)
        read = []
        for part in self.entry["parts"]:
            start, stop = max(lo, part["lo"]), min(hi, part["hi"])
            if start >= stop:
                continue
            table = self._open(part).slice(start - part["lo"], stop - start)
            values[start - lo : stop - lo] = _value_matrix(table.column("value"), self.dim)
            mask[start - lo : stop - lo] = table.column("present").to_numpy()
            read.append(part["file"])
        return FeatureBlock(lo, hi, values, mask, tuple(read))

    def _open(self, part: dict[str, Any]) -> pa.Table:
        path = self.root / FEATURES_DIR / self.modality / part["file"]
        if not path.is_file():
            raise DataError(path, "feature part listed in the manifest is missing")
        if self.verify and sha256_file(path) != part["sha256"]:
            raise DataError(path, "checksum mismatch with manifest.json: the part changed after it was written")
        table = pq.read_table(path)
        ids = table.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(part["lo"], part["hi"])):
            raise DataError(path, f"ids do not cover rows [{part['lo']}, {part['hi']}) in order")
        return table


def _checked_arrays(values: np.ndarray, mask: np.ndarray, num_entities: int) -> tuple[np.ndarray, np.ndarray]:
    """Shapes must match the dataset; absent rows are zeroed so no stale value can leak."""
    values = np.asarray(values)
    mask = np.asarray(mask)
    if values.ndim != 2 or values.shape[0] != num_entities or values.shape[1] < 1:
        raise ValueError(f"values must be ({num_entities}, D >= 1), got {values.shape}")
    if mask.shape != (num_entities,) or mask.dtype != np.bool_:
        raise ValueError(f"mask must be bool ({num_entities},), got {mask.dtype} {mask.shape}")
    values = np.asarray(values, dtype=np.float32)
    if not mask.all():
        values = np.where(mask[:, None], values, np.float32(0))
    if not np.isfinite(values).all():
        raise ValueError("values of present rows must be finite")
    return values, mask


def check_modality_name(modality: str) -> None:
    """The modality is a folder name: keep it to a safe, portable set of characters."""
    if not _MODALITY_NAME.fullmatch(modality):
        raise DistmapError(f"invalid modality name {modality!r}: use letters, digits, '_', '-' or '.'")


def _write_part(folder: Path, index: int, values: np.ndarray, mask: np.ndarray, lo: int, hi: int) -> dict[str, Any]:
    dim = values.shape[1]
    table = pa.table(
        {
            "id": pa.array(np.arange(lo, hi, dtype=np.int32)),
            "value": pa.FixedSizeListArray.from_arrays(pa.array(values[lo:hi].reshape(-1)), dim),
            "present": pa.array(mask[lo:hi]),
        }
    )
    name = f"part-{index:05d}.parquet"
    return {"file": name, "lo": lo, "hi": hi, "sha256": write_parquet(table, folder / name)}


def _replace_dir(staging: Path, target: Path) -> None:
    """Swap the freshly written parts in by renames, so a reader never sees a half-written set."""
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def _value_matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """Fixed-size-list column -> (n, dim) float32 without a Python loop over rows."""
    array = column.combine_chunks()
    flat = array.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim)
