"""Strict streaming reader for tab-separated files (`.tsv`, `.tsv.gz`).

Every problem is a `DataError` naming the file, the 1-based line and what is wrong, so a
user can fix the file instead of debugging a silently mis-parsed graph.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from distmap.errors import DataError

SUFFIXES = (".tsv", ".tsv.gz")
_BOM = "\ufeff"


def is_gzip(path: Path) -> bool:
    """Compression is chosen by suffix, so a misnamed file fails loudly rather than silently."""
    return path.name.endswith(".gz")


def find_tsv(folder: Path, stem: str) -> Path | None:
    """`folder/stem.tsv` or `folder/stem.tsv.gz`; both present is ambiguous, hence an error."""
    found = [folder / f"{stem}{suffix}" for suffix in SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DataError(folder, f"both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


class TsvReader:
    """Iterate over `(line_number, fields)` of a TSV file, checking every line.

    `columns` names the expected columns (used in messages); `optional` names columns that
    may be empty (e.g. a missing description). Blank lines are skipped, and their line
    numbers are kept in `blank_lines` so that callers report them; `skip_header` skips line 1,
    whatever it holds, and keeps it in `skipped_first_line`.
    """

    def __init__(
        self,
        path: str | Path,
        columns: Sequence[str],
        *,
        skip_header: bool = False,
        optional: Collection[str] = (),
        progress: bool = False,
    ) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self.skip_header = skip_header
        self.optional = frozenset(optional)
        self.progress = progress
        self.blank_lines: list[int] = []
        self.skipped_first_line: str | None = None

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        with open_binary(self.path) as stream:
            lines = tqdm(
                _numbered_lines(self.path, stream),
                desc=self.path.name,
                unit=" lines",
                unit_scale=True,
                leave=False,
                mininterval=1.0,
                delay=2.0,
                disable=not self.progress,
            )
            for number, line in lines:
                if number == 1 and self.skip_header:
                    self.skipped_first_line = line
                    continue
                if not line.strip():
                    self.blank_lines.append(number)
                    continue
                yield number, self._fields(number, line)

    def _fields(self, number: int, line: str) -> list[str]:
        fields = line.split("\t")
        if len(fields) != len(self.columns):
            raise DataError(self.path, _column_count_problem(line, fields, self.columns), number)
        if all(fields) and [value.strip() for value in fields] == fields:
            return fields
        for index, (name, value) in enumerate(zip(self.columns, fields, strict=True), start=1):
            if value == value.strip() and (value or name in self.optional):
                continue
            raise DataError(self.path, _field_problem(name, index, value), number)
        return fields


def read_header(path: str | Path) -> list[str]:
    """The first line of a file with a header, checked like any other line."""
    path = Path(path)
    with open_binary(path) as stream:
        for number, line in _numbered_lines(path, stream):
            if not line.strip():
                raise DataError(path, "line 1 is blank; expected a header line", number)
            names = line.split("\t")
            for index, name in enumerate(names, start=1):
                if not name or name != name.strip():
                    raise DataError(path, f"header: {_field_problem('header', index, name)}", number)
                if name in names[: index - 1]:
                    raise DataError(path, f"header: duplicate column name '{name}' (column {index})", number)
            return names
    raise DataError(path, "file is empty; expected a header line")


def open_binary(path: Path) -> BinaryIO:
    """Open for byte-wise reading so that decoding errors can be tied to a line."""
    if not path.is_file():
        raise DataError(path, "file not found")
    if is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _numbered_lines(path: Path, stream: BinaryIO) -> Iterator[tuple[int, str]]:
    """Decode line by line (strict UTF-8), dropping LF or CRLF and a leading BOM."""
    number = 0
    try:
        for number, raw in enumerate(stream, start=1):
            yield number, _decode(path, number, raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        problem = f"corrupt or truncated gzip data ({exc}); lines before this one were read"
        raise DataError(path, problem, number + 1) from None


def _decode(path: Path, number: int, raw: bytes) -> str:
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(path, f"NUL byte at byte {nul + 1} of the line", number)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"invalid UTF-8 (byte {exc.start + 1} of the line)", number) from None
    if line.endswith("\n"):
        line = line[:-2] if line.endswith("\r\n") else line[:-1]
    if number == 1 and line.startswith(_BOM):
        line = line[1:]
    return line


def _column_count_problem(line: str, fields: list[str], columns: Sequence[str]) -> str:
    problem = f"expected {len(columns)} tab-separated columns ({', '.join(columns)}), found {len(fields)}"
    if len(fields) == 1 and " " in line.strip():
        problem += "; the line has no tab but spaces: looks space-separated"
    return problem


def _field_problem(name: str, index: int, value: str) -> str:
    where = f"{name} field (column {index})"
    if not value:
        return f"empty {where}"
    if not value.strip():
        return f"whitespace-only {where}"
    return f"leading/trailing whitespace in {where}: {value!r}"
