"""A whole training run around the epoch loop: validation, model selection, early stopping,
checkpoint/resume, final test evaluation and MLflow logging.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from distmap.align.terms import alignment_terms
from distmap.config import Config
from distmap.data.batches import QueryGroups
from distmap.data.hygiene import KEY as HYGIENE_KEY
from distmap.data.hygiene import LEAKY_VALID_SHARE, split_hygiene
from distmap.data.kg import KnowledgeGraph, add_reciprocals, entity_degrees
from distmap.data.manifest import MANIFEST, read_manifest
from distmap.data.shards import FeatureShards
from distmap.distributed.sharded import sampled_step
from distmap.errors import DistmapError
from distmap.models.model import KGEModel
from distmap.models.multimodal import FeatureRows
from distmap.models.zoo import FeatureReader, build_model
from distmap.plots import training_curve
from distmap.track import Tracker, source_commit
from distmap.train.breakdown import Breakdown, breakdown_of
from distmap.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from distmap.train.evaluate import EvalResult, FilterIndex, evaluate
from distmap.train.loop import EpochStats, StepLoss, local_step, run_epoch
from distmap.train.objective import Objective, frequency_class_weights, seed_loss_terms
from distmap.train.probe import METRIC as PROBE_METRIC
from distmap.train.probe import pairwise_spread, probe_ids
from distmap.train.sampled import CandidateSampler
from distmap.train.sparse import SplitOptimizer, TableAdagrad

SELECTION_METRIC = "both/mrr"

Optimizer = torch.optim.Optimizer | SplitOptimizer


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    valid: EvalResult
    test: EvalResult
    history: list[dict[str, Any]]
    breakdown: Breakdown | None = None  # of the test split, on the chief (None on other workers)


def run_name(cfg: Config) -> str:
    """``track.run_name``, else ``<dataset>-<model label>-seed<n>`` (``wn9-img-map-wo-r-seed0`` for "MAP w/o R")."""
    label = re.sub(r"[^a-z0-9]+", "-", cfg.model.display_name.lower()).strip("-")
    return cfg.track.run_name or f"{Path(cfg.data.path).name}-{label}-seed{cfg.train.seed}"


def feature_reader(root: Path, modalities: list[str]) -> FeatureReader:
    """Reads feature rows [lo, hi) of the dataset's modalities; a modality the dataset lacks is a
    one-line error naming the command that makes it."""
    available = read_manifest(root).get("features", {})
    for m in modalities:
        if m not in available:
            make = (
                f"distmap features text {root} --source FILE.tsv"
                if m == "text"
                else f"distmap features import {root} --modality {m} --file FILE.npy"
            )
            have = ", ".join(sorted(available)) or "none"
            raise DistmapError(
                f"data.modalities: {root} has no '{m}' features (it has: {have}); make them with `{make}`"
            )

    def read(modality: str, lo: int, hi: int) -> FeatureRows:
        block = FeatureShards(root, modality).read(lo, hi)
        return FeatureRows(torch.from_numpy(block.values), torch.from_numpy(block.mask), block.parts_read)

    return read


def train_seen(cfg: Config, train: Tensor, num_entities: int) -> Tensor | None:
    """(N,) bool: the entities of some line of ``train``, where the model ranks the others from their
    features (``model.cold.unseen: projection``); else None. A worker holding a share of the train
    triples passes its share and sums the degrees (``entity_degrees``) itself."""
    if not cfg.data.modalities or cfg.model.cold.unseen != "projection":
        return None
    return entity_degrees(train, num_entities) > 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DistmapError("train.device: cuda was asked for but torch sees no GPU (see README, GPU install)")
    return torch.device(name)


def make_optimizer(name: str, model: KGEModel, lr: float, sparse: bool = False) -> Optimizer:
    """The optimizer of ``model`` (parameters already on their device).

    Adagrad or Adam: on CPU the fused kernels update each row in one pass: the stock Adagrad
    allocates a table-sized ``sqrt(sum)`` and reads the table four times, which at 10^6 rows costs
    more than the step's GEMMs (benchmarks/scale.py). CUDA keeps torch's default (foreach).
    ``rowwise_adagrad``, or ``sparse`` (the sampled objective's touched-rows updates), give the entity
    table a ``TableAdagrad`` and every other parameter element-wise Adagrad.
    """
    table = model.entities.weight
    if name == "rowwise_adagrad" or sparse:
        rest = [p for p in model.parameters() if p is not table]
        return SplitOptimizer(TableAdagrad([table], lr, rowwise=name == "rowwise_adagrad"), _stock("adagrad", rest, lr))
    return _stock(name, list(model.parameters()), lr)


def _stock(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    fused = True if all(p.device.type == "cpu" for p in params) else None
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, fused=fused)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def evaluate_split(
    model: KGEModel, kg: KnowledgeGraph, split: str, filter_index: FilterIndex, cfg: Config, progress: bool = False
) -> EvalResult:
    model.eval()
    with torch.no_grad():
        return evaluate(
            model.scorer(),
            kg.splits[split].to(model.relations.device),
            num_relations=kg.num_relations,
            filter_index=filter_index,
            num_entities=kg.num_entities,
            tie=cfg.train.tie,
            batch_size=cfg.train.eval_batch_size,
            progress=progress,
        )


def build_filter(kg: KnowledgeGraph, device: torch.device) -> FilterIndex:
    """Known answers of train+valid+test, both directions, for filtered ranking."""
    return FilterIndex.build(add_reciprocals(kg.all_triples(), kg.num_relations).to(device), kg.num_entities)


def check_resumable(saved: dict[str, Any], cfg: Config, where: Path) -> None:
    """A checkpoint resumes only the same run: all but the epoch budget, patience, threads, the leaky-valid
    permission and tracking must match."""

    def comparable(config: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(config)
        out.pop("track", None)
        for key in ("epochs", "patience", "threads", "allow_leaky_valid"):
            out["train"].pop(key, None)
        return out

    if comparable(saved) != comparable(cfg.to_dict()):
        raise DistmapError(
            f"{where}: holds a run with a different config; set track.run_name to start a new run, or delete the folder"
        )


def training_parts(cfg: Config, kg: KnowledgeGraph, device: torch.device) -> tuple[QueryGroups, Objective, FilterIndex]:
    """Training examples (with reciprocals) grouped by query (``train.loop``), the objective and the
    filter: the same for 1 or P workers."""
    groups, objective = training_groups(cfg, kg.train, kg.num_entities, kg.num_relations, device)
    return groups, objective, build_filter(kg, device)


def training_groups(
    cfg: Config, train: torch.Tensor, num_entities: int, num_relations: int, device: torch.device
) -> tuple[QueryGroups, Objective]:
    """``train`` triples with reciprocals, grouped by query, and the objective."""
    examples = add_reciprocals(train, num_relations)
    weights = (
        frequency_class_weights(examples, num_entities).to(device) if cfg.train.class_weights == "frequency" else None
    )
    objective = Objective(
        cfg.train.regularizer,
        cfg.train.reg_weight,
        cfg.train.label_smoothing,
        weights,
        alignment_terms(cfg.align),
        cfg.model.cold.loss,
        cfg.model.cold.weight,
    )
    return QueryGroups.build(examples, grouped=cfg.train.loop == "grouped"), objective


def training_step(
    cfg: Config,
    model: KGEModel,
    groups: QueryGroups,
    objective: Objective,
    optimizer: Optimizer,
    sampler: CandidateSampler,
    exact: Callable[[KGEModel, QueryGroups, Objective], StepLoss] = local_step,
) -> StepLoss:
    """The step of ``train.objective``: ``exact`` (one process's or a worker's 1-vs-all step) or the
    sampled step, which is the same code for one process and P workers. Both engines build it at the
    start of every epoch, where loss terms that hold state across steps start afresh
    (``Objective.start_epoch``): an epoch-end checkpoint then holds all a resumed run needs."""
    objective.start_epoch()
    if cfg.train.objective == "exact":
        return exact(model, groups, objective)
    assert isinstance(optimizer, SplitOptimizer)  # make_optimizer(..., sparse=True) gives one
    return sampled_step(model, groups, objective, optimizer.table, sampler, cfg.train.candidates)


@dataclass
class Progress:
    """Where a run stands, beyond its tensors: saved in every checkpoint."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_mrr: float = -1.0
    since_best: int = 0
    mlflow_run_id: str | None = None

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> Progress:
        return cls(**{f.name: saved[f.name] for f in fields(cls)})

    def finished(self, epochs: int, patience: int) -> bool:
        return self.epoch >= epochs or bool(patience and self.since_best >= patience)

    def validation(self) -> dict[str, float]:
        """What a checkpoint reports to Ray (Train, or Tune's schedulers): the latest validation."""
        return {
            "epoch": self.epoch,
            "valid_mrr": self.history[-1][f"valid/{SELECTION_METRIC}"],
            "best_mrr": self.best_mrr,
        }


class Engine(Protocol):
    """What a run needs from its model: one process, or one worker of a sharded group."""

    kg: KnowledgeGraph
    num_examples: int

    def train_epoch(self, desc: str) -> EpochStats: ...

    def evaluate(self, split: str) -> EvalResult: ...

    def fused_rows(self, ids: Tensor) -> Tensor:
        """The fused rows of global ``ids`` as they are now (collective on a sharded group: every
        worker asks for the same ids)."""
        ...

    def keep_best(self) -> None: ...

    def use_best(self) -> None: ...

    def save(self, progress: Progress) -> None: ...

    def load(self) -> Progress | None: ...


Report = Callable[[dict[str, float]], None]


class LocalEngine:
    """The whole model in one process; checkpoints are one file, each announced to ``report``
    (e.g. ``ray.tune.report`` in a study's trial) once written."""

    def __init__(
        self, cfg: Config, kg: KnowledgeGraph, device: torch.device, checkpoint: Path, report: Report | None = None
    ) -> None:
        self.cfg, self.kg, self.checkpoint, self.report = cfg, kg, checkpoint, report
        self.model = build_model(
            cfg.model,
            kg.num_entities,
            kg.num_relations,
            cfg.train.seed,
            modalities=cfg.data.modalities,
            read_features=feature_reader(kg.root, cfg.data.modalities),
            table_dtype=getattr(torch, cfg.train.table_dtype),
            seen=train_seen(cfg, kg.train, kg.num_entities),
        ).to(device)
        self.optimizer = make_optimizer(cfg.train.optimizer, self.model, cfg.train.lr, cfg.train.objective == "sampled")
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.sampler = CandidateSampler(cfg.train.seed)
        seed_loss_terms(cfg.train.seed)
        self.groups, self.objective, self.filter_index = training_parts(cfg, kg, device)
        self.num_examples = self.groups.num_triples
        self.best: dict[str, torch.Tensor] | None = None

    def train_epoch(self, desc: str) -> EpochStats:
        t = self.cfg.train
        self.model.train()
        step = training_step(self.cfg, self.model, self.groups, self.objective, self.optimizer, self.sampler)
        return run_epoch(step, self.optimizer, self.groups, t.batch_size, self.generator, desc, unit=t.batch_unit)

    def evaluate(self, split: str) -> EvalResult:
        return evaluate_split(self.model, self.kg, split, self.filter_index, self.cfg)

    def fused_rows(self, ids: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model.views().fused[ids.to(self.model.relations.device)]

    def keep_best(self) -> None:
        self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def use_best(self) -> None:
        self.model.load_state_dict(self.best)

    def save(self, progress: Progress) -> None:
        save_checkpoint(
            self.checkpoint,
            {
                **asdict(progress),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "best_state": self.best,
                "generator": self.generator.get_state(),
                "sampler_steps": self.sampler.steps,
                "torch_rng": torch.get_rng_state(),
                "config": self.cfg.to_dict(),
            },
        )
        if self.report is not None:
            self.report(progress.validation())

    def load(self) -> Progress | None:
        if not self.checkpoint.exists():
            return None
        saved = load_checkpoint(self.checkpoint)
        check_resumable(saved["config"], self.cfg, self.checkpoint)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        self.sampler.steps = saved["sampler_steps"]
        torch.set_rng_state(saved["torch_rng"])
        self.best = saved["best_state"]
        return Progress.from_saved(saved)


def fit(cfg: Config, log: Callable[[str], None] = print, report: Report | None = None) -> FitResult:
    """Train ``cfg`` in this process to the end (resuming from the run's checkpoint), then test;
    ``report`` hears of every checkpoint (see ``LocalEngine``)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    kg = KnowledgeGraph.load(cfg.data.path)
    run_dir = Path(cfg.track.output_dir) / run_name(cfg)
    engine = LocalEngine(cfg, kg, device, run_dir / CHECKPOINT_NAME, report)
    log(
        f"{run_name(cfg)}: {kg.num_entities} entities, {kg.num_relations} relations, {engine.num_examples} "
        f"training examples (with reciprocals) in {engine.groups.num_groups} {cfg.train.loop} query groups, "
        f"{cfg.model.name} rank {cfg.model.rank}, device {device}"
    )
    return run(engine, cfg, log)


def run(engine: Engine, cfg: Config, log: Callable[[str], None], chief: bool = True) -> FitResult:
    """Resume, train, select on valid, test; the chief (rank 0) writes outputs and logs to MLflow.

    Every worker calls this with its own engine: evaluation and checkpoints are collective.
    """
    name = run_name(cfg)
    run_dir = Path(cfg.track.output_dir) / name
    # The code this process runs is the checkout as it is now, not as it is when training ends.
    commit = source_commit()
    leak = valid_leak(engine.kg, log if chief else lambda _: None)
    refuse_leaky_valid(leak, cfg)
    probe = probe_ids(engine.kg, cfg.track.probe_entities) if cfg.track.probe_entities else None
    progress = engine.load()
    if progress is None:
        progress = Progress()
    else:
        log(f"resuming {name} from epoch {progress.epoch}")
    tracker = Tracker(cfg.track if chief else dataclasses.replace(cfg.track, enabled=False))
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        progress.mlflow_run_id = tracker.start(name, cfg.flat(), progress.mlflow_run_id)
        if leak.leaky:
            log(f"WARNING: {leak}; selecting on it anyway (train.allow_leaky_valid: true): valid metrics are inflated")
            tracker.set_tags({"distmap.leaky_valid": "true", "distmap.valid_in_train_share": f"{leak.share:.4f}"})
    try:
        train_epochs(engine, cfg, progress, tracker, log, probe)
        engine.use_best()
        valid, test = engine.evaluate("valid"), engine.evaluate("test")
        # the counts are all-reduced already: the chief's breakdown of them is the one of P = 1
        buckets = breakdown_of(engine.kg, test, "test") if chief else None
        if buckets is not None:
            tracker.log_metrics(
                {
                    "best_epoch": progress.best_epoch,
                    **{f"test/{k}": v for k, v in test.flat().items()},
                    **buckets.flat("test"),
                }
            )
            for path in _write_outputs(run_dir, cfg, progress, valid, test, name, buckets, commit):
                tracker.log_artifact(path)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    log(
        f"best epoch {progress.best_epoch} (valid {SELECTION_METRIC} {progress.best_mrr:.4f})\n"
        f"test ({cfg.train.tie} ties):\n{test.table()}"
        + (f"\n{buckets.table(relations=10)}" if buckets is not None else "")
    )
    return FitResult(run_dir, progress.best_epoch, valid, test, progress.history, buckets)


@dataclass(frozen=True)
class ValidLeak:
    """Valid lines whose triple also occurs in train: selecting on such a valid split rewards memorising train."""

    lines: int
    unique: int
    valid_lines: int

    @property
    def share(self) -> float:
        return self.lines / self.valid_lines

    @property
    def leaky(self) -> bool:
        return self.share > LEAKY_VALID_SHARE

    def __str__(self) -> str:
        return (
            f"{self.share:.1%} of valid lines ({self.lines:,} of {self.valid_lines:,}; {self.unique:,} unique triples) "
            f"also occur in train, over the {LEAKY_VALID_SHARE:.0%} that model selection tolerates"
        )


def valid_leak(kg: KnowledgeGraph, log: Callable[[str], None]) -> ValidLeak:
    """Train ∩ valid as `prepare` counted it in the manifest; a manifest written before those counts
    existed gets them computed here from the loaded splits (one numpy pass), with a note."""
    counts = kg.manifest.get(HYGIENE_KEY)
    if counts is None:
        log(f"note: {kg.root / MANIFEST} has no {HYGIENE_KEY} (prepared by an older distmap); computed from the splits")
        ids = {split: triples.numpy() for split, triples in kg.splits.items()}
        counts = split_hygiene(ids, kg.num_entities, kg.num_relations)
    overlap = counts["overlap"]["valid_in_train"]
    return ValidLeak(overlap["lines"], overlap["unique"], counts["lines"]["valid"])


def refuse_leaky_valid(leak: ValidLeak, cfg: Config) -> None:
    """Every rank refuses alike (the counts are the same everywhere), before anything is written."""
    if leak.leaky and not cfg.train.allow_leaky_valid:
        raise DistmapError(
            f"{cfg.data.path}: {leak}; re-prepare with `distmap prepare --clean`, "
            "or set train.allow_leaky_valid: true to select on it anyway"
        )


def train_epochs(
    engine: Engine,
    cfg: Config,
    progress: Progress,
    tracker: Tracker,
    log: Callable[[str], None],
    probe: Tensor | None = None,
) -> None:
    """Epochs from ``progress.epoch`` on; validates every k epochs and checkpoints after each validation.
    With ``probe`` (entity ids) each epoch's record carries their spread (Fig. 2a)."""
    t = cfg.train
    while not progress.finished(t.epochs, t.patience):
        epoch = progress.epoch + 1
        stats = engine.train_epoch(f"epoch {epoch}/{t.epochs}")
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": stats.loss,
            "fit_loss": stats.fit_loss,
            "epoch_seconds": stats.seconds,
            "examples_per_s": stats.examples_per_second(engine.num_examples),
        }
        if probe is not None:
            record[PROBE_METRIC] = pairwise_spread(engine.fused_rows(probe))
        progress.epoch = epoch
        summary = f"epoch {epoch}: loss {stats.loss:.4f}, {record['examples_per_s']:.0f} ex/s"
        validate = epoch % t.valid_every == 0 or epoch == t.epochs
        if validate:
            valid = engine.evaluate("valid")
            mrr = valid.metrics["both"]["mrr"]
            record.update({f"valid/{k}": v for k, v in valid.flat().items()})
            if mrr > progress.best_mrr:
                progress.best_mrr, progress.best_epoch, progress.since_best = mrr, epoch, 0
                engine.keep_best()
            else:
                progress.since_best += 1
            summary += f", valid MRR {mrr:.4f} (best {progress.best_mrr:.4f} @ {progress.best_epoch})"
        log(summary)
        progress.history.append(record)
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        if validate:
            engine.save(progress)
            if progress.finished(t.epochs, t.patience) and epoch < t.epochs:
                log(f"early stop: no valid improvement in {t.patience} validations")


def _write_outputs(
    run_dir: Path,
    cfg: Config,
    progress: Progress,
    valid: EvalResult,
    test: EvalResult,
    name: str,
    buckets: Breakdown,
    commit: str,
) -> list[Path]:
    metrics = {
        "run": name,
        "label": cfg.model.display_name,
        "dataset": Path(cfg.data.path).name,
        "model": cfg.model.name,
        "modalities": ["structure", *cfg.data.modalities],
        "seed": cfg.train.seed,
        "commit": commit,  # taken when the run started
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "train_seconds": sum(h["epoch_seconds"] for h in progress.history),
        "epoch_seconds": [h["epoch_seconds"] for h in progress.history],
        "tie": cfg.train.tie,
        "valid": valid.metrics,
        "test": test.metrics,
        "test_both_by_tie": {
            tie: test.with_tie(tie).metrics["both"] for tie in ("optimistic", "realistic", "pessimistic")
        },
        # degree buckets and categories; every relation's numbers are in breakdown.json / .md
        "breakdown": buckets.to_dict(relations=False),
    }
    if cfg.track.probe_entities:
        metrics["probe"] = {
            "entities": cfg.track.probe_entities,
            "spread": [h[PROBE_METRIC] for h in progress.history],
        }
    metrics_path = run_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    curve = training_curve(progress.history, run_dir / "training_curve.png", name)
    return [run_dir / "config.yaml", metrics_path, curve, *buckets.write(run_dir)]
