"""A study's YAML: which training config, which keys to search and how, checked at load time.

The searched keys are training-config keys (``align.lambda_align``); every listed value, and both
ends of every range, is applied to the training config and validated there when the study loads,
so a typo'd key or a value the trainer would refuse stops the study before any trial starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distmap.config import Config, TrackConfig, _build, _require, config_from_dict, load_config
from distmap.distributed.trainer import absolute_paths
from distmap.errors import ConfigError

Value = bool | int | float | str | list[str]
"""A searched value: what a config key can hold."""


@dataclass
class Param:
    """How one key is searched; exactly one of: ``grid`` (every value, a trial each), ``choice`` (one
    drawn per trial), ``uniform`` / ``loguniform`` ([low, high], floats), ``randint`` ([low, high), ints)."""

    grid: list[Value] | None = None
    choice: list[Value] | None = None
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    randint: list[int] | None = None

    def check_as(self, key: str) -> None:
        given = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        _require(len(given) == 1, key, f"give exactly one of grid, choice, uniform, loguniform, randint (got {given})")
        where, values = f"{key}.{given[0]}", getattr(self, given[0])
        if given[0] in ("grid", "choice"):
            _require(bool(values), where, "needs at least one value")
        else:
            _require(len(values) == 2 and values[0] < values[1], where, "needs [low, high] with low < high")
            _require(given[0] != "loguniform" or values[0] > 0, where, "needs low > 0")

    @property
    def kind(self) -> str:
        return next(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    @property
    def values(self) -> list[Any]:
        return getattr(self, self.kind)


@dataclass
class SearchConfig:
    """``grid``: the Cartesian product of the grids (``num_samples`` times; ranges drawn anew each time);
    ``sweep``: the base config, then each key's grid values one key at a time, the others at the base
    config's values (a parameter study); ``random``: ``num_samples`` draws; ``optuna``: ``num_samples``
    trials proposed by Optuna's TPE from the results so far (no grids)."""

    algorithm: Literal["grid", "sweep", "random", "optuna"] = "grid"
    num_samples: int = 1
    seed: int = 0
    max_concurrent: int = 1

    def check(self) -> None:
        _require(self.num_samples > 0, "search.num_samples", "must be > 0")
        _require(self.max_concurrent > 0, "search.max_concurrent", "must be > 0")


@dataclass
class SchedulerConfig:
    """``asha`` stops trials whose valid MRR trails the others' at the same validation (ASHA: at
    least ``grace_period`` validations per trial, a ``1/reduction_factor`` share goes on at each rung);
    ``fifo`` runs every trial to its end (what a parameter study's curves need)."""

    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 3

    def check(self) -> None:
        _require(self.grace_period > 0, "scheduler.grace_period", "must be > 0 (validations)")
        _require(self.reduction_factor > 1, "scheduler.reduction_factor", "must be > 1")


@dataclass
class StudyConfig:
    """A study: ``train`` (a training config's path) with ``set`` overrides, searched over ``space``.

    All trials log to one MLflow experiment (``experiment``, default: the study's name) in the
    training config's store; trial runs, checkpoints and Tune's state go under its ``track.output_dir``.
    ``cpus_per_trial`` is what Ray reserves for a trial's own process (its Ray Train workers, with
    ``scale.workers``, reserve theirs); ``address: local`` starts a private Ray on 127.0.0.1.
    """

    name: str
    train: str
    set: list[str] = field(default_factory=list)
    experiment: str = ""
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cpus_per_trial: int = 1
    address: str = "local"
    space: dict[str, Param] = field(default_factory=dict)  # read key by key (``load_study``)

    def check(self) -> None:
        _require(bool(self.name) and "/" not in self.name, "name", "must be a non-empty name without '/'")
        _require(self.cpus_per_trial >= 0, "cpus_per_trial", "must be >= 0")


@dataclass
class Study:
    """A loaded study: its YAML and the training config its trials start from (``train`` + ``set``)."""

    cfg: StudyConfig
    base: Config

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def space(self) -> dict[str, Param]:
        return self.cfg.space

    @property
    def experiment(self) -> str:
        return self.cfg.experiment or self.cfg.name

    def track(self, run_name: str) -> TrackConfig:
        """Where trial ``run_name`` logs: the training config's store, the study's experiment."""
        return dataclasses.replace(self.base.track, run_name=run_name, experiment=self.experiment)

    def trial_config(self, params: dict[str, Any], run_name: str) -> Config:
        """The base config with a trial's values, its run named ``run_name``, logging to the study's experiment."""
        raw = copy.deepcopy(self.base.to_dict())
        for key, value in params.items():
            _assign(raw, key, value)
        raw["track"].update(run_name=run_name, experiment=self.experiment)
        return config_from_dict(raw, f"trial {run_name}")

    def sweep_points(self) -> list[dict[str, Any]]:
        """``sweep``: the base point, then every grid value that differs from the base's, one key at a time."""
        flat = self.base.flat()
        points: list[dict[str, Any]] = [{}]
        for key, param in self.space.items():
            points += [{key: v} for v in param.values if v != flat[key]]
        return points


def _assign(raw: dict[str, Any], key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = raw
    for section in sections:
        node = node[section]
    node[leaf] = value


def load_study(path: str | Path, overrides: list[str] = ()) -> Study:
    """Read and validate a study, its training config, and every searched value against it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: study file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        if not isinstance(raw, dict):
            raise ConfigError("top level: expected a mapping")
        space = raw.get("space")
        if not isinstance(space, dict):
            raise ConfigError("space: expected a mapping of training-config keys", "space")
        _require(bool(space), "space", "needs at least one key to search")
        cfg = _build(StudyConfig, {k: v for k, v in raw.items() if k != "space"}, "")
        cfg.space = {key: _build(Param, spec, f"space.{key}") for key, spec in space.items()}
        for key, param in cfg.space.items():
            param.check_as(f"space.{key}")
        # Trials run in Tune's own folders: their data, output and tracking paths are made absolute here.
        study = Study(cfg, absolute_paths(load_config(cfg.train, [*cfg.set, *overrides])))
        _check_space(study)
        _check_algorithm(study)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}", err.key) from None
    return study


def _check_space(study: Study) -> None:
    """Every key must be a training-config key, and every value one the training config accepts."""
    flat = study.base.flat()
    for key, param in study.space.items():
        if key not in flat:
            close = difflib.get_close_matches(key, list(flat), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"space.{key}: not a key of the training config {study.cfg.train}{hint}", f"space.{key}")
        for i, value in enumerate(param.values):
            if param.kind == "randint" and i == 1:
                value -= 1  # the upper end is excluded
            raw = copy.deepcopy(study.base.to_dict())
            _assign(raw, key, value)
            try:
                config_from_dict(raw)
            except ConfigError as err:
                where = f"space.{key}.{param.kind}[{i}]"
                raise ConfigError(f"{where}: {value!r} is refused by the training config: {err}", where) from None


def _check_algorithm(study: Study) -> None:
    kinds = {key: p.kind for key, p in study.space.items()}
    algorithm = study.cfg.search.algorithm
    if algorithm == "sweep":
        bad = [k for k, kind in kinds.items() if kind != "grid"]
        _require(not bad, f"space.{bad[0] if bad else ''}", "a sweep takes grid values only")
    if algorithm == "optuna":
        bad = [k for k, kind in kinds.items() if kind == "grid"]
        _require(not bad, f"space.{bad[0] if bad else ''}", "optuna proposes values: use choice or a range, not grid")
