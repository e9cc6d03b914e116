"""Every benchmark run leaves a record: a JSON file under ``benchmarks/results/`` beside the table it prints.

A figure in RESULTS.md is only as good as a reader's ability to re-derive it. So each benchmark runs
its body inside ``recorded(name, args)``, which copies everything the benchmark prints (its header and
markdown tables) into the record, adds the facts a reader needs to judge the numbers (command, commit
and whether the tree was dirty, UTC start and end, CPU model, cores, load average before and after,
library versions) and the measured values the benchmark hands it (``record.values``, unrounded), and
writes ``benchmarks/results/<name>-<UTC date and time>.json``. RESULTS.md quotes a record in two ways,
both checked by ``tests/test_results_records.py``:

- a table copied from a record sits between ``<!-- record: benchmarks/results/F.json -->`` and
  ``<!-- /record -->`` and must equal one of the tables the record printed;
- a figure in prose links to its value: ``[1.36×](benchmarks/results/F.json#values.map.ratio)``
  (a dotted path into the record); the number shown must equal the value rounded as shown.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from distmap.track import source_commit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LIBRARIES = ("torch", "numpy", "pyarrow", "POT", "ray", "mlflow", "pykeen", "torchbiggraph")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The CPU features that decide which kernels run (AVX-512, AMX): a record from a CPU without
    them is not comparable with one from a CPU that has them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                return [flag for flag in line.split(":", 1)[1].split() if flag in wanted]
    except OSError:
        pass
    return []


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def printed_tables(text: str) -> list[str]:
    """The markdown tables in ``text``: runs of consecutive lines that start with ``|``."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it (paths and other objects as text)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy (the record's ``printed``)."""

    def __init__(self, terminal: Any) -> None:
        self.terminal, self.copy = terminal, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.terminal.flush()


class Record:
    """What one benchmark run measured and where; ``values`` is the benchmark's to fill."""

    def __init__(self, name: str, args: argparse.Namespace | dict[str, Any]) -> None:
        self.name = name
        self.values: dict[str, Any] = {}
        self.started = datetime.now(UTC)
        commit, _, dirty = source_commit().partition("+")  # the same commit and dirty rule as a run's
        self.facts: dict[str, Any] = {
            "benchmark": name,
            "command": shlex.join(["python", *sys.argv]) if sys.argv and sys.argv[0] else name,
            "args": plain(vars(args) if isinstance(args, argparse.Namespace) else args),
            "commit": commit,
            "dirty": bool(dirty),
            "started": f"{self.started:%Y-%m-%dT%H:%M:%S}Z",
            "host": {
                "cpu": cpu_name(),
                "cpu_flags": cpu_flags(),
                "cores": os.cpu_count(),
                "platform": platform.platform(),
                "load_before": [round(x, 2) for x in os.getloadavg()],
            },
            "versions": versions(),
        }

    def finish(self, printed: str, folder: Path) -> Path:
        ended = datetime.now(UTC)
        self.facts["ended"] = f"{ended:%Y-%m-%dT%H:%M:%S}Z"
        self.facts["host"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
        body = {**self.facts, "values": plain(self.values), "tables": printed_tables(printed), "printed": printed}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-{self.started:%Y-%m-%dT%H%M}Z.json"
        path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


@contextlib.contextmanager
def recorded(name: str, args: argparse.Namespace | dict[str, Any], folder: Path | None = None) -> Iterator[Record]:
    """Run a benchmark's body with its output copied into a record, written when the body ends
    (also when it exits with a code for a missed target, not when it fails: a half-run benchmark has
    no figures to quote). ``DISTMAP_RECORDS`` moves the
    folder (e.g. for a scratch run that should not land beside the committed records)."""
    record = Record(name, args)
    tee = Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            yield record
    except SystemExit as done:  # a benchmark that exits 1 for a missed target still measured it
        record.facts["exit_code"] = done.code
        write(record, tee, folder)
        raise
    write(record, tee, folder)


def write(record: Record, tee: Tee, folder: Path | None) -> None:
    target = folder or Path(os.environ.get("DISTMAP_RECORDS", RESULTS))
    path = record.finish(tee.copy.getvalue(), target).resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(f"\nrecord: {shown}", flush=True)
