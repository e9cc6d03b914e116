"""Typed run configuration, loaded from YAML and checked at load time.

Every section is a dataclass; the loader walks the YAML mapping against the dataclass fields,
so an unknown key, a value of the wrong type or an out-of-range value is an error that names
the key (``train.lr``) and the file, before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distmap.errors import ConfigError

ModelName = Literal["transe", "distmult", "complex", "rotate"]
OptimizerName = Literal["adagrad", "adam"]
RegularizerName = Literal["n3", "l2", "none"]
TieBreak = Literal["realistic", "optimistic", "pessimistic"]


@dataclass
class DataConfig:
    """Where the prepared dataset lives (the output of ``distmap prepare``)."""

    path: str
    modalities: list[str] = field(default_factory=list)

    def check(self) -> None:
        _require(bool(self.path), "data.path", "must not be empty")


@dataclass
class ModelConfig:
    """Scoring function and representation sizes."""

    name: ModelName
    rank: int = 500
    init_scale: float = 1e-3
    p_norm: int = 2

    def check(self) -> None:
        _require(self.rank > 0, "model.rank", "must be > 0")
        _require(self.init_scale > 0, "model.init_scale", "must be > 0")
        _require(self.p_norm in (1, 2), "model.p_norm", "must be 1 or 2")


@dataclass
class TrainConfig:
    """1-vs-all training with reciprocal relations (kbc style).

    ``allow_leaky_valid`` lets a run select its model on a valid split of which more than 5 % of
    the lines also occur in train (see ``distmap.data.hygiene``); without it such a run is refused.
    """

    epochs: int = 50
    batch_size: int = 1000
    optimizer: OptimizerName = "adagrad"
    lr: float = 0.1
    regularizer: RegularizerName = "n3"
    reg_weight: float = 5e-3
    label_smoothing: float = 0.0
    class_weights: Literal["none", "frequency"] = "none"
    valid_every: int = 5
    patience: int = 0
    seed: int = 0
    eval_batch_size: int = 1000
    tie: TieBreak = "realistic"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0
    allow_leaky_valid: bool = False

    def check(self) -> None:
        _require(self.epochs > 0, "train.epochs", "must be > 0")
        _require(self.batch_size > 0, "train.batch_size", "must be > 0")
        _require(self.lr > 0, "train.lr", "must be > 0")
        _require(self.reg_weight >= 0, "train.reg_weight", "must be >= 0")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        _require(self.valid_every > 0, "train.valid_every", "must be > 0")
        _require(self.patience >= 0, "train.patience", "must be >= 0 (0 = no early stopping)")
        _require(self.eval_batch_size > 0, "train.eval_batch_size", "must be > 0")
        _require(self.threads >= 0, "train.threads", "must be >= 0 (0 = torch default)")


@dataclass
class TrackConfig:
    """Where runs, checkpoints and MLflow records go."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "distmap"
    run_name: str = ""
    output_dir: str = "runs"
    enabled: bool = True


@dataclass
class ScaleConfig:
    """Where training runs: one process (``workers: 0``) or P Ray Train workers over row shards.

    ``address: local`` starts a private Ray instance on 127.0.0.1; anything else is passed to
    ``ray.init`` (``auto`` inside a cluster). ``fail_at_step`` is fault injection for tests and
    drills: the last worker exits at that global step, once per run, and Ray must recover.
    """

    workers: int = 0
    use_gpu: bool = False
    address: str = "local"
    cpus_per_worker: int = 1
    max_failures: int = 0
    fail_at_step: int = 0

    def check(self) -> None:
        _require(self.workers >= 0, "scale.workers", "must be >= 0 (0 = single process without Ray)")
        _require(self.cpus_per_worker > 0, "scale.cpus_per_worker", "must be > 0")
        _require(self.max_failures >= -1, "scale.max_failures", "must be >= -1 (-1 = retry forever)")
        _require(self.fail_at_step >= 0, "scale.fail_at_step", "must be >= 0 (0 = no injected failure)")
        _require(bool(self.address), "scale.address", "must be 'local' or a Ray cluster address")


@dataclass
class Config:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.1, ...}``: the form MLflow params take."""
        return {
            f"{section}.{key}": value for section, values in self.to_dict().items() for key, value in values.items()
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}", key)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ConfigError(f"{key}: {value!r} is not one of {choices}", key)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}", key)
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {hint}", key)
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null", key)
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}", key)
    return value


def _build(cls: type, values: Any, prefix: str) -> Any:
    where = prefix or "top level"
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}", prefix or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{key}: unknown key (known in {where}: {', '.join(fields)})", key)
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing", key)
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as YAML (``0.1``, ``true``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected key=value, e.g. train.lr=0.05")
    path, text = assignment.split("=", 1)
    *sections, leaf = path.strip().split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: {section} is not a section")
    node[leaf] = yaml.safe_load(text)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return _build(Config, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}", err.key) from None


def _override_for(key: str | None, overrides: list[str]) -> str | None:
    """The last ``--set`` argument that set ``key`` or a section above it (it won over the file)."""
    if key is None:
        return None
    for assignment in reversed(overrides):
        path = assignment.split("=", 1)[0].strip()
        if key == path or key.startswith(path + ".") or path.startswith(key + "."):
            return assignment
    return None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, and validate the whole thing.

    An error caused by an override names that ``--set`` argument, not the file it did not come from.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return _build(Config, raw, "")
    except ConfigError as err:
        culprit = _override_for(err.key, list(overrides))
        where = f"--set {culprit}" if culprit else str(path)
        raise ConfigError(f"{where}: {err}", err.key) from None
