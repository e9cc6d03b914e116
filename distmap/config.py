"""Typed run configuration, loaded from YAML and checked at load time.

Every section is a dataclass; the loader walks the YAML mapping against the dataclass fields,
so an unknown key, a value of the wrong type or an out-of-range value is an error that names
the key (``train.lr``) and the file, before any work starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distmap.errors import ConfigError

ModelName = Literal["transe", "distmult", "complex", "rotate", "transae", "ikrl", "tbkge", "mmkrl", "otkge", "map"]
STRUCTURAL_MODELS = ("transe", "distmult", "complex", "rotate")
MODALITY_MODELS = ("transae", "ikrl", "tbkge", "mmkrl", "otkge", "map")  # need at least one modality
# Multimodal models whose rows the sampled objective builds from its touched rows alone (row-wise
# projection and fusion, no model loss over the block): MAP and its ablations.
SAMPLED_MODALITY_MODELS = ("map",)
OptimizerName = Literal["adagrad", "rowwise_adagrad", "adam"]
RegularizerName = Literal["n3", "l2", "none"]
TieBreak = Literal["realistic", "optimistic", "pessimistic"]


@dataclass
class DataConfig:
    """Where the prepared dataset lives (the output of ``distmap prepare``), and which feature
    modalities (``distmap features``) the model uses besides structure, e.g. ``[text]``."""

    path: str
    modalities: list[str] = field(default_factory=list)

    def check(self) -> None:
        _require(bool(self.path), "data.path", "must not be empty")
        _require("structure" not in self.modalities, "data.modalities", "structure is always used; list only features")
        _require(len(set(self.modalities)) == len(self.modalities), "data.modalities", "a modality is listed twice")


@dataclass
class OTKGEConfig:
    """OTKGE's code: fusion ``(1-alpha-gamma) E + alpha X_img W_img + gamma X_ling W_ling``, projections
    from Sinkhorn plans of ``anchors`` entities (``K = exp(-C / reg)``) scaled by ``scale``."""

    alpha: float = 0.1
    gamma: float = 0.8
    scale: float = 100.0
    anchors: int = 10
    reg: float = 10.0

    def check(self) -> None:
        _require(
            self.alpha >= 0 and self.gamma >= 0 and self.alpha + self.gamma < 1,
            "model.otkge.alpha",
            "alpha, gamma >= 0 with alpha + gamma < 1",
        )
        _require(self.anchors > 0, "model.otkge.anchors", "must be > 0")
        _require(self.reg > 0, "model.otkge.reg", "must be > 0")


@dataclass
class ColdConfig:
    """How a multimodal model represents entities that structure places badly or not at all.

    In 1-vs-all training an entity with no train triple is a negative in every softmax and never a
    positive, so its free structural row learns "never the answer" and the fused row carries it.
    ``unseen: projection`` drops the structural view of such an entity (its fused row is its projected
    features alone, at training and at ranking); ``table`` keeps its free row (a structural model's way).
    ``dropout``: in every training step each entity with features loses its structural view with this
    probability (drawn per step and entity, the same on every worker), so the projections learn to rank
    on their own (0: off, the default; the cold-start configs use 0.3). ``loss: twin`` scores the step
    a second time with those rows dropped and adds that objective times ``weight`` to the full one (the
    full one keeps every structural row, so the warm entities keep what structure gives them);
    ``replace`` trains on the dropped rows only.
    ``negatives: false`` leaves the entities ranked from their features alone out of the training
    softmax: nothing is known of them, so they are not taught to be "never the answer" either.
    ``structure_grad: false`` stops the twin's gradient at the structural rows (it trains the
    projections, the fusion and the relations only): the structure then learns from the full
    objective alone, as without the twin. ``twin_trains: projections`` stops it everywhere but at
    the dropped rows' projections (structural rows, relations and the fused rows of the other
    entities are read without gradient): the full objective then trains the model exactly as
    without the twin, and the twin teaches the projections to stand in for a structural row of that
    model; with ``model.fusion: structure`` the warm entities are ranked by their structural rows alone.
    Measured (RESULTS.md, docs/method.md): ``unseen: projection`` alone ranks cold entities from their
    features at no training cost; the twin (``dropout: 0.3``) lifts cold answers much further
    (wn9-img-cold 0.19 -> 0.29, fb-img-cold 0.03 -> 0.12) but doubles a step's scoring and, on
    FB-IMG, slows the warm ranking (-0.04 MRR at 12 epochs where nothing is cold), so it is the cold
    configs' setting, not the default. ``negatives: false`` lifted cold answers further but cost the
    warm ones 0.17 MRR. ``twin_trains: projections`` with ``negatives: false`` keeps the warm ranking
    among warm entities where the structural model has it and lifts fb-img-cold's cold answers to 0.22,
    but the cold entities' text rows, never a negative, then outrank warm answers (warm queries 0.69
    against ComplEx's 0.82); on wn9-img-cold it is worse than the twin in every bucket, so it is an
    alternative, not a default. IKRL and TBKGE score the structural view on its own and keep it everywhere.
    """

    unseen: Literal["projection", "table"] = "projection"
    dropout: float = 0.0
    loss: Literal["twin", "replace"] = "twin"
    weight: float = 1.0
    negatives: bool = True
    structure_grad: bool = True
    twin_trains: Literal["all", "projections"] = "all"

    def check(self) -> None:
        _require(0 <= self.dropout < 1, "model.cold.dropout", "must be in [0, 1)")
        _require(self.weight >= 0, "model.cold.weight", "must be >= 0")


@dataclass
class ModelConfig:
    """Scoring function, representations, and how modalities enter (``docs/method.md``).

    ``fusion: auto`` is each model's own: ``learned`` weights for map, transae, mmkrl and a
    structural model given modalities; OTKGE's fixed ``weighted`` sum; the views side by side
    (``concat``) for ikrl and tbkge, which score every pair of views; ``structure``: the structural
    row where there is one, the projections only where there is none (``ColdConfig``). ``fusion_weights`` lists
    one weight per view, structure first, then ``data.modalities`` in order (default: equal).
    ``label`` names the run in logs and tables (e.g. ``MAP w/o R``).
    """

    name: ModelName
    rank: int = 500
    init_scale: float = 1e-3
    p_norm: int = 2
    label: str = ""
    projection: Literal["linear", "mlp"] = "linear"
    fusion: Literal["auto", "weighted", "learned", "gate", "attention", "structure"] = "auto"
    fusion_weights: list[float] = field(default_factory=list)
    aux_weight: float = 1.0
    adversarial_eps: float = 0.0
    otkge: OTKGEConfig = field(default_factory=OTKGEConfig)
    cold: ColdConfig = field(default_factory=ColdConfig)

    def check(self) -> None:
        _require(self.rank > 0, "model.rank", "must be > 0")
        _require(self.init_scale > 0, "model.init_scale", "must be > 0")
        _require(self.p_norm in (1, 2), "model.p_norm", "must be 1 or 2")
        _require(all(w >= 0 for w in self.fusion_weights), "model.fusion_weights", "must be >= 0")
        _require(self.aux_weight >= 0, "model.aux_weight", "must be >= 0")
        _require(self.adversarial_eps >= 0, "model.adversarial_eps", "must be >= 0")
        _require(
            self.fusion == "auto" or self.name not in ("ikrl", "tbkge", "otkge"),
            "model.fusion",
            f"{self.name} has its own fusion; leave it at auto",
        )

    @property
    def display_name(self) -> str:
        return self.label or self.name


@dataclass
class AlignConfig:
    """Modality alignment (MAP's A, or entity-level full OT) and instance preserving (MAP's R).

    ``scope: minibatch`` (MAP): per step, ``sample`` of the batch's entities (0 = all) plus ``extra``
    uniformly drawn entities (the augmentation; optionally ``perturb``-ed views) are aligned;
    ``scope: full``: all entities every ``plan_every`` steps' plan, counted from each epoch's first step
    (the costly OTKGE-style baseline).
    ``lambda_align`` weighs the transport cost ``<P, C>``, ``lambda_preserve`` the instance-preserving
    KL at neighbourhood ``temperature``. Both 0 = no term (``MAP w/o R & A``). ``detach_structure``
    makes the structural rows the fixed target of the transport (only the projections move);
    otherwise the transport cost also pulls structural rows towards the projected ones.
    """

    lambda_align: float = 0.0
    lambda_preserve: float = 0.0
    scope: Literal["minibatch", "full"] = "minibatch"
    sample: int = 256
    extra: int = 64
    solver: Literal["exact", "sinkhorn"] = "exact"
    reg: float = 0.05
    perturb: float = 0.0
    plan_every: int = 1
    detach_structure: bool = True
    temperature: float = 0.1
    preserve_view: Literal["fused", "projected"] = "projected"

    def check(self) -> None:
        _require(self.lambda_align >= 0, "align.lambda_align", "must be >= 0")
        _require(self.lambda_preserve >= 0, "align.lambda_preserve", "must be >= 0")
        _require(self.sample >= 0, "align.sample", "must be >= 0 (0 = all of the batch's entities)")
        _require(self.extra >= 0, "align.extra", "must be >= 0")
        _require(self.reg > 0, "align.reg", "must be > 0")
        _require(self.perturb >= 0, "align.perturb", "must be >= 0")
        _require(self.plan_every > 0, "align.plan_every", "must be > 0")
        _require(self.temperature > 0, "align.temperature", "must be > 0")


@dataclass
class TrainConfig:
    """1-vs-all training with reciprocal relations (kbc style).

    ``loop: grouped`` scores each unique (h, r) query of the training examples once per epoch,
    with the loss summed over its true tails (the per-triple objective term for term);
    ``per_triple`` scores one row per triple, as kbc. ``batch_size`` counts ``batch_unit``:
    queries (groups) or triples (whole groups are kept together, so a batch holds about that many).

    ``allow_leaky_valid`` lets a run select its model on a valid split of which more than 5 % of
    the lines also occur in train (see ``distmap.data.hygiene``); without it such a run is refused.

    ``objective: exact`` is the 1-vs-all softmax over all N entities; ``sampled`` scores each step's
    queries against its true tails plus ``candidates`` (S) rows drawn uniformly, split over the
    workers, and updates only the rows the step touched (``docs/distributed.md`` says when to
    choose which). ``optimizer: rowwise_adagrad`` keeps one Adagrad accumulator per entity row
    (PyTorch-BigGraph's); relations keep element-wise Adagrad. ``table_dtype: bfloat16`` stores the
    entity table in half the memory, with float32 math on the gathered rows (``sampled`` only).
    """

    epochs: int = 50
    batch_size: int = 1000
    loop: Literal["grouped", "per_triple"] = "grouped"
    batch_unit: Literal["queries", "triples"] = "queries"
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
    objective: Literal["exact", "sampled"] = "exact"
    candidates: int = 1000
    table_dtype: Literal["float32", "bfloat16"] = "float32"

    def check(self) -> None:
        _require(self.epochs > 0, "train.epochs", "must be > 0")
        _require(self.candidates > 0, "train.candidates", "must be > 0")
        if self.objective == "sampled":
            _require(
                self.optimizer != "adam",
                "train.optimizer",
                "objective sampled updates rows sparsely: adagrad or rowwise_adagrad",
            )
            _require(self.label_smoothing == 0, "train.label_smoothing", "not defined for objective sampled; use 0")
            _require(self.class_weights == "none", "train.class_weights", "not defined for objective sampled; use none")
        _require(
            self.table_dtype == "float32" or self.objective == "sampled",
            "train.table_dtype",
            "bfloat16 needs objective sampled (the exact objective's dense update is float32)",
        )
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
    """Where runs, checkpoints and MLflow records go.

    ``probe_entities`` names a few entities (e.g. five hyponyms of one synset) whose fused rows'
    spread ``sum_{i<j} ||e_i - e_j||_2`` is logged after every epoch (metric ``probe/spread``):
    the paper's Fig. 2a, whether alignment tears related entities apart.
    """

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "distmap"
    run_name: str = ""
    output_dir: str = "runs"
    enabled: bool = True
    probe_entities: list[str] = field(default_factory=list)

    def check(self) -> None:
        _require(len(self.probe_entities) != 1, "track.probe_entities", "a spread needs at least two entities")
        _require(
            len(set(self.probe_entities)) == len(self.probe_entities),
            "track.probe_entities",
            "an entity is listed twice",
        )


@dataclass
class ScaleConfig:
    """Where training runs: one process (``workers: 0``) or P Ray Train workers over row shards.

    ``address: local`` starts a private Ray instance on 127.0.0.1; anything else is passed to
    ``ray.init`` (``auto`` inside a cluster). ``shard_triples``: each worker reads only its share
    of the training triples (Parquet row groups) and a step's global batch is the union of the
    workers' local batches; otherwise every worker holds all training triples and draws the same
    batch. ``fail_at_step`` is fault injection for tests and drills: the last worker exits at that
    global step, once per run, and Ray must recover.
    """

    workers: int = 0
    use_gpu: bool = False
    address: str = "local"
    cpus_per_worker: int = 1
    max_failures: int = 0
    fail_at_step: int = 0
    shard_triples: bool = False

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
    align: AlignConfig = field(default_factory=AlignConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.1, "model.otkge.alpha": 0.1, ...}``: the form MLflow params take."""

        def walk(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, value in values.items():
                name = f"{prefix}.{key}" if prefix else key
                out.update(walk(name, value) if isinstance(value, dict) else {name: value})
            return out

        return walk("", self.to_dict())

    def check(self) -> None:
        """Checks across sections."""
        name = self.model.name
        _require(
            name not in MODALITY_MODELS or bool(self.data.modalities),
            "data.modalities",
            f"model {name} needs at least one feature modality, e.g. [text]",
        )
        _require(
            self.train.objective == "exact"
            or (name in STRUCTURAL_MODELS and not self.data.modalities)
            or name in SAMPLED_MODALITY_MODELS,
            "train.objective",
            "sampled supports the structural models (transe, distmult, complex, rotate) without data.modalities, "
            f"and {', '.join(SAMPLED_MODALITY_MODELS)}",
        )
        _require(
            self.train.objective == "exact" or self.align.scope == "minibatch" or self.align.lambda_align == 0,
            "align.scope",
            "full aligns every row of the block each step; objective sampled needs scope minibatch",
        )
        _require(
            self.train.objective == "exact" or self.train.candidates >= max(1, self.scale.workers),
            "train.candidates",
            "objective sampled draws at least one candidate per worker: candidates >= scale.workers",
        )
        _require(
            not self.scale.shard_triples or self.train.class_weights == "none",
            "scale.shard_triples",
            "class_weights: frequency counts targets over all training triples; use class_weights: none",
        )
        _require(
            self.model.cold.negatives or self.train.label_smoothing == 0,
            "model.cold.negatives",
            "false leaves entities out of the softmax, which label smoothing spreads over all: use one or the other",
        )
        aligning = self.align.lambda_align > 0 or self.align.lambda_preserve > 0
        _require(
            not aligning or bool(self.data.modalities),
            "align.lambda_align",
            "alignment needs a feature modality in data.modalities",
        )

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


RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray in a job's driver: ``{"runtime_env": {"working_dir": "gcs://_ray_pkg_<hash>.zip", ...}, ...}``."""


def in_ray_working_dir_copy() -> bool:
    """Whether this process runs in Ray's unpacked copy of a job's ``--working-dir``: under Ray's
    ``runtime_resources/working_dir_files``, or in the folder named after the job's working-dir package."""
    parts = Path.cwd().parts
    if any(a == "runtime_resources" and b == "working_dir_files" for a, b in itertools.pairwise(parts)):
        return True
    try:
        uri = json.loads(os.environ.get(RAY_JOB_CONFIG_ENV, "{}"))["runtime_env"]["working_dir"]
    except (ValueError, KeyError, TypeError):
        return False
    package = uri.rsplit("/", 1)[-1].split(".", 1)[0]  # gcs://_ray_pkg_<hash>.zip unpacks to _ray_pkg_<hash>
    return package.startswith("_ray_pkg_") and package in parts  # a local:// working dir is used in place


def refuse_relative_in_ray_copy(paths: dict[str, str]) -> None:
    """Stop before a relative path resolves in Ray's copy of a job's working dir. ``paths`` maps a
    name (``data.path``, ``--out``) to the path as given; a ``sqlite:///`` URI counts by its file."""
    relative = [name for name, value in paths.items() if not Path(value.removeprefix("sqlite:///")).is_absolute()]
    if not relative or not in_ray_working_dir_copy():
        return
    named = ", ".join(f"{name} '{paths[name]}'" for name in relative)
    raise ConfigError(
        f"{named} {'is' if len(relative) == 1 else 'are'} relative and this job runs in Ray's temporary copy of "
        "the working dir, which leaves out git-ignored files (datasets/, runs/, mlflow.db) and is deleted after "
        "the job: pass --root $PWD (the checkout, as seen by the machine that runs the job) or give absolute paths",
        relative[0],
    )


def config_paths(cfg: Config) -> dict[str, str]:
    """The config's paths by key: the dataset, the run folders, and the MLflow store if it is SQLite."""
    paths = {"data.path": cfg.data.path, "track.output_dir": cfg.track.output_dir}
    if cfg.track.tracking_uri.startswith("sqlite:///"):
        paths["track.tracking_uri"] = cfg.track.tracking_uri
    return paths


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, and validate the whole thing.

    An error caused by an override names that ``--set`` argument, not the file it did not come from.
    In Ray's temporary copy of a job's working dir, relative data, output and store paths are refused.
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
        cfg = _build(Config, raw, "")
        refuse_relative_in_ray_copy(config_paths(cfg))
        return cfg
    except ConfigError as err:
        culprit = _override_for(err.key, list(overrides))
        where = f"--set {culprit}" if culprit else str(path)
        raise ConfigError(f"{where}: {err}", err.key) from None
