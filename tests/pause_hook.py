"""A ``worker_process_setup_hook`` for tests/test_two_nodes.py, in a module of its own that imports
only the standard library: Ray runs it in every worker process it starts (controller, helpers,
train workers), so it must stay cheap there.

Where ``$DISTMAP_TEST_PAUSE_DIR`` is set, ``distmap.distributed.engine.ShardedEngine`` is patched when
(and if) a process imports it: an engine not restored from a checkpoint stops at the start of epoch
``PAUSE_EPOCH`` until its process is killed, after writing ``paused-rank<r>``; an engine restored
from a checkpoint writes ``restored-rank<r>``. Both files hold the worker's Ray node id.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

PAUSE_DIR = "DISTMAP_TEST_PAUSE_DIR"
PAUSE_EPOCH = 3  # the epoch after the first checkpoint (valid_every: 2)
ENGINE = "distmap.distributed.engine"


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _patch(engine: ModuleType, folder: Path) -> None:
    cls = engine.ShardedEngine
    init, train_epoch = cls.__init__, cls.train_epoch

    def traced_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.epochs_started = 0
        if self.restore_from is not None:
            (folder / f"restored-rank{self.rank}").write_text(_node_id(), encoding="utf-8")

    def pausing_train_epoch(self: Any, desc: str) -> Any:
        self.epochs_started += 1
        if self.restore_from is None and self.epochs_started == PAUSE_EPOCH:
            (folder / f"paused-rank{self.rank}").write_text(_node_id(), encoding="utf-8")
            while True:  # until the node goes away, or Ray Train kills this worker to restart
                time.sleep(0.2)
        return train_epoch(self, desc)

    cls.__init__ = traced_init
    cls.train_epoch = pausing_train_epoch


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != ENGINE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module, folder = spec.loader.exec_module, self.folder

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(module, folder)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def pause_hook() -> None:
    folder = os.environ.get(PAUSE_DIR)
    if folder:
        sys.meta_path.insert(0, _PatchOnImport(Path(folder)))
