"""Every distmap error survives pickle (Ray hands a worker's error to the driver that way) with its
message and attributes, so the CLI prints its one line rather than Ray's deserialisation traceback."""

from __future__ import annotations

import importlib
import pickle
import pkgutil

import distmap
from distmap.errors import ConfigError, DataError, DistmapError

EXAMPLES: dict[type[DistmapError], list[DistmapError]] = {
    DistmapError: [DistmapError("give --relation and exactly one of --head and --tail")],
    DataError: [
        DataError("datasets/wn9-img/train.tsv", "expected 3 columns, got 2", 17),
        DataError("datasets/wn9-img", "not a dataset directory"),
    ],
    ConfigError: [ConfigError("configs/x.yaml: train.lr: must be > 0", "train.lr"), ConfigError("--set x: bad")],
}


def distmap_error_classes() -> set[type[DistmapError]]:
    """DistmapError and every subclass defined in distmap (all modules imported), at any depth."""
    for module in pkgutil.walk_packages(distmap.__path__, "distmap."):
        importlib.import_module(module.name)
    found, todo = set(), [DistmapError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("distmap.") and cls not in found:  # not Ray's RayTaskError(...) twins
            found.add(cls)
            todo += cls.__subclasses__()
    return found


def test_every_distmap_error_survives_pickle() -> None:
    classes = distmap_error_classes()
    missing = sorted(c.__qualname__ for c in classes - set(EXAMPLES))
    assert not missing, f"add an example of {', '.join(missing)} to EXAMPLES"
    for cls in classes:
        for err in EXAMPLES[cls]:
            err.add_note("a note added after construction")
            copy = pickle.loads(pickle.dumps(err))  # noqa: S301 (our own bytes: how Ray ships a worker's error)
            assert type(copy) is cls
            assert str(copy) == str(err)
            assert copy.args == err.args
            assert vars(copy) == vars(err)
