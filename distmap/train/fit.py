"""A whole training run around the epoch loop: validation, model selection, early stopping,
checkpoint/resume, final test evaluation and MLflow logging.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distmap.config import Config
from distmap.data.kg import KnowledgeGraph, add_reciprocals
from distmap.errors import DistmapError
from distmap.models.model import KGEModel
from distmap.models.zoo import build_model
from distmap.plots import training_curve
from distmap.track import Tracker
from distmap.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from distmap.train.evaluate import EvalResult, FilterIndex, evaluate
from distmap.train.loop import Objective, frequency_class_weights, train_epoch

SELECTION_METRIC = "both/mrr"


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    valid: EvalResult
    test: EvalResult
    history: list[dict[str, Any]]


def run_name(cfg: Config) -> str:
    return cfg.track.run_name or f"{Path(cfg.data.path).name}-{cfg.model.name}-seed{cfg.train.seed}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DistmapError("train.device: cuda was asked for but torch sees no GPU (see README, GPU install)")
    return torch.device(name)


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=lr) if name == "adagrad" else torch.optim.Adam(params, lr=lr)


def evaluate_split(model: KGEModel, kg: KnowledgeGraph, split: str, filter_index: FilterIndex, cfg: Config,
                   progress: bool = False) -> EvalResult:
    model.eval()
    with torch.no_grad():
        return evaluate(model.score, kg.splits[split].to(model.relations.device), num_relations=kg.num_relations,
                        filter_index=filter_index, num_entities=kg.num_entities, tie=cfg.train.tie,
                        batch_size=cfg.train.eval_batch_size, progress=progress)


def build_filter(kg: KnowledgeGraph, device: torch.device) -> FilterIndex:
    """Known answers of train+valid+test, both directions, for filtered ranking."""
    return FilterIndex.build(add_reciprocals(kg.all_triples(), kg.num_relations).to(device), kg.num_entities)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match for a checkpoint to be resumed (epochs may grow)."""
    out = copy.deepcopy(config)
    out.pop("track", None)
    out["train"].pop("epochs", None)
    out["train"].pop("patience", None)
    return out


def fit(cfg: Config, log: Callable[[str], None] = print) -> FitResult:
    """Train ``cfg`` to the end (resuming from the run's checkpoint if one exists), then test."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    kg = KnowledgeGraph.load(cfg.data.path)
    name = run_name(cfg)
    run_dir = Path(cfg.track.output_dir) / name
    ckpt_path = run_dir / CHECKPOINT_NAME

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, kg.num_entities, kg.num_relations, cfg.train.seed).to(device)
    optimizer = make_optimizer(cfg.train.optimizer, model.parameters(), cfg.train.lr)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    examples = add_reciprocals(kg.train, kg.num_relations)
    weights = (frequency_class_weights(examples, kg.num_entities).to(device)
               if cfg.train.class_weights == "frequency" else None)
    objective = Objective(cfg.train.regularizer, cfg.train.reg_weight, cfg.train.label_smoothing, weights)
    filter_index = build_filter(kg, device)

    state: dict[str, Any] = {"epoch": 0, "history": [], "best_state": None, "best_epoch": 0,
                             "best_mrr": -1.0, "since_best": 0, "mlflow_run_id": None, "done": False}
    if ckpt_path.exists():
        saved = load_checkpoint(ckpt_path)
        if _comparable(saved["config"]) != _comparable(cfg.to_dict()):
            raise DistmapError(f"{ckpt_path}: holds a run with a different config; "
                               "set track.run_name to start a new run, or delete the folder")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        state.update({k: saved[k] for k in state})
        t = cfg.train
        state["done"] = state["epoch"] >= t.epochs or bool(t.patience and state["since_best"] >= t.patience)
        log(f"resuming {name} from epoch {state['epoch']} ({ckpt_path})")

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    tracker = Tracker(cfg.track)
    state["mlflow_run_id"] = tracker.start(name, cfg.flat(), state["mlflow_run_id"])
    log(f"{name}: {kg.num_entities} entities, {kg.num_relations} relations, {examples.shape[0]} training "
        f"examples (with reciprocals), {cfg.model.name} rank {cfg.model.rank}, device {device}")
    try:
        _train(cfg, model, optimizer, objective, examples, generator, kg, filter_index, state, tracker, ckpt_path, log)
        model.load_state_dict(state["best_state"])
        valid = evaluate_split(model, kg, "valid", filter_index, cfg)
        test = evaluate_split(model, kg, "test", filter_index, cfg)
        tracker.log_metrics({"best_epoch": state["best_epoch"],
                             **{f"test/{k}": v for k, v in test.flat().items()}})
        artifacts = _write_outputs(run_dir, cfg, state, valid, test, name)
        for path in artifacts:
            tracker.log_artifact(path)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    log(f"best epoch {state['best_epoch']} (valid {SELECTION_METRIC} {state['best_mrr']:.4f})\n"
        f"test ({cfg.train.tie} ties):\n{test.table()}")
    return FitResult(run_dir, state["best_epoch"], valid, test, state["history"])


def _train(cfg: Config, model: KGEModel, optimizer: torch.optim.Optimizer, objective: Objective,
           examples: torch.Tensor, generator: torch.Generator, kg: KnowledgeGraph, filter_index: FilterIndex,
           state: dict[str, Any], tracker: Tracker, ckpt_path: Path, log: Callable[[str], None]) -> None:
    """Epochs from ``state['epoch']`` on; validates every k epochs, checkpoints after each validation."""
    t = cfg.train
    while not state["done"] and state["epoch"] < t.epochs:
        epoch = state["epoch"] + 1
        stats = train_epoch(model, examples, optimizer, objective, t.batch_size, generator,
                            desc=f"epoch {epoch}/{t.epochs}")
        record: dict[str, Any] = {"epoch": epoch, "loss": stats.loss, "fit_loss": stats.fit_loss,
                                  "epoch_seconds": stats.seconds, "examples_per_s": stats.examples_per_second(examples.shape[0])}
        state["epoch"] = epoch
        if epoch % t.valid_every == 0 or epoch == t.epochs:
            valid = evaluate_split(model, kg, "valid", filter_index, cfg)
            mrr = valid.metrics["both"]["mrr"]
            record.update({f"valid/{k}": v for k, v in valid.flat().items()})
            if mrr > state["best_mrr"]:
                state.update(best_mrr=mrr, best_epoch=epoch, since_best=0,
                             best_state={k: v.detach().clone() for k, v in model.state_dict().items()})
            else:
                state["since_best"] += 1
            state["done"] = bool(t.patience and state["since_best"] >= t.patience) or epoch == t.epochs
            log(f"epoch {epoch}: loss {stats.loss:.4f}, {record['examples_per_s']:.0f} ex/s, "
                f"valid MRR {mrr:.4f} (best {state['best_mrr']:.4f} @ {state['best_epoch']})")
        else:
            log(f"epoch {epoch}: loss {stats.loss:.4f}, {record['examples_per_s']:.0f} ex/s")
            if state["done"] and epoch < t.epochs:
                log(f"early stop: no valid improvement in {t.patience} validations")
        state["history"].append(record)
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        if "valid/both/mrr" in record:
            save_checkpoint(ckpt_path, {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                                        "config": cfg.to_dict()})


def _write_outputs(run_dir: Path, cfg: Config, state: dict[str, Any], valid: EvalResult, test: EvalResult,
                   name: str) -> list[Path]:
    metrics = {"run": name, "dataset": Path(cfg.data.path).name, "model": cfg.model.name,
               "modalities": ["structure", *cfg.data.modalities], "seed": cfg.train.seed,
               "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "train_seconds": sum(h["epoch_seconds"] for h in state["history"]), "tie": cfg.train.tie,
               "valid": valid.metrics, "test": test.metrics,
               "test_both_by_tie": {tie: test.with_tie(tie).metrics["both"]
                                    for tie in ("optimistic", "realistic", "pessimistic")}}
    metrics_path = run_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    curve = training_curve(state["history"], run_dir / "training_curve.png", name)
    return [run_dir / "config.yaml", metrics_path, curve]
