"""User-facing errors: the CLI prints these as one line, without a traceback.

They pickle with the arguments they were made with: Ray hands an error raised on a worker to the
driver that way, and the driver's CLI prints it as on one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DistmapError(Exception):
    """An error caused by user input (a file, a config, a flag), not by a bug."""


class DataError(DistmapError):
    """A problem in an input file, located by path and (where it has one) line number."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.problem, self.line), self.__dict__


class ConfigError(DistmapError):
    """A bad configuration key or value; the message names the key and where it came from (a file
    or a ``--set`` argument). ``key`` is the dotted key at fault, when there is one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0], self.key), self.__dict__
