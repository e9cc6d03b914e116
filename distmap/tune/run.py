"""Run a study with Ray Tune: start (or resume) it, then mark its outcome in MLflow.

Tune keeps the study's state under ``<track.output_dir>/tune/<study>``; running the same study
again resumes it (``Tuner.restore``): finished and failed trials stay as they are, unfinished
ones continue from their runs' checkpoints. A study changed since it started is refused there,
as a training run is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distmap.distributed.trainer import start_ray
from distmap.errors import DistmapError
from distmap.tune.record import close_stopped, mark_best
from distmap.tune.search import METRIC, num_samples, param_space, scheduler, search_algorithm, trial_params
from distmap.tune.study import Study
from distmap.tune.trial import train_trial, trial_run_name, trial_tags

STUDY_FILE = "distmap-study.json"


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    run_name: str
    status: str  # finished | stopped | failed | unfinished
    params: dict[str, Any]
    valid_mrr: float | None
    test_mrr: float | None


@dataclass(frozen=True)
class StudyResult:
    path: Path
    trials: list[TrialOutcome]
    best: TrialOutcome | None

    def table(self) -> str:
        lines = ["trial         status      valid MRR  test MRR  values"]
        for t in self.trials:
            valid = f"{t.valid_mrr:.4f}" if t.valid_mrr is not None else "-"
            test = f"{t.test_mrr:.4f}" if t.test_mrr is not None else "-"
            mark = " <- best" if t is self.best else ""
            lines.append(f"{t.trial_id:13} {t.status:10} {valid:>9}  {test:>8}  {json.dumps(t.params)}{mark}")
        return "\n".join(lines)


def _tuner(study: Study, path: Path, log: Callable[[str], None]) -> Any:
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(train_trial, study=study), {"cpu": study.cfg.cpus_per_trial})
    saved = path / STUDY_FILE
    if tune.Tuner.can_restore(path):
        if saved.exists() and json.loads(saved.read_text(encoding="utf-8")) != _fingerprint(study):
            raise DistmapError(f"{path}: holds a different study of that name; rename the study or delete the folder")
        log(f"resuming study {study.name} from {path}")
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
    search = study.cfg.search
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(study),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=search_algorithm(study),
            scheduler=scheduler(study),
            num_samples=num_samples(study),
            max_concurrent_trials=search.max_concurrent,
        ),
        run_config=tune.RunConfig(name=study.name, storage_path=str(path.parent), verbose=1),
    )
    path.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(_fingerprint(study), indent=2), encoding="utf-8")
    return tuner


def _fingerprint(study: Study) -> dict[str, Any]:
    """What must not change for a study to resume: its search and the training config it starts from."""
    cfg = asdict(study.cfg)
    return json.loads(json.dumps({"study": cfg, "base": study.base.to_dict()}, default=str))


def run_study(study: Study, log: Callable[[str], None] = print) -> StudyResult:
    """Run (or resume) ``study`` to its end; raises KeyboardInterrupt if it was interrupted."""
    base = study.base
    path = Path(base.track.output_dir).absolute() / "tune" / study.name
    per_trial = study.cfg.cpus_per_trial + base.scale.workers * base.scale.cpus_per_worker
    started = start_ray(
        study.cfg.address, Path(base.track.output_dir), study.cfg.search.max_concurrent * per_trial, log
    )
    import ray

    try:
        _tuner(study, path, log).fit()
    finally:
        if started:
            ray.shutdown()
    result = outcome(study, path)
    log(result.table())
    unfinished = [t for t in result.trials if t.status == "unfinished"]
    if unfinished:
        log(f"study {study.name}: {len(unfinished)} trial(s) unfinished; run the same command again to resume")
        raise KeyboardInterrupt
    best = result.best
    if best is not None:
        log(f"best trial {best.trial_id} (MLflow run {best.run_name}): valid MRR {best.valid_mrr:.4f}")
    return result


def outcome(study: Study, path: Path) -> StudyResult:
    """Every trial's status and metrics from Tune's saved state; closes runs a scheduler stopped and
    marks the best finished trial (by best-on-valid MRR) in MLflow."""
    from ray.tune import ExperimentAnalysis

    trials = []
    for trial in ExperimentAnalysis(str(path)).trials:
        last = trial.last_result or {}
        name = trial_run_name(study, trial.trial_id)
        if trial.status == "ERROR":
            status = "failed"
        elif trial.status != "TERMINATED":
            status = "unfinished"
        elif "test_mrr" in last:
            status = "finished"
        else:
            status = "stopped"
            close_stopped(study.track(name), trial_tags(study, trial.trial_id, trial_params(trial.config)))
        done = status == "finished"
        trials.append(
            TrialOutcome(
                trial.trial_id,
                name,
                status,
                trial_params(trial.config),
                last.get(METRIC) if done else None,
                last.get("test_mrr") if done else None,
            )
        )
    finished = [t for t in trials if t.status == "finished"]
    best = max(finished, key=lambda t: t.valid_mrr, default=None)
    if best is not None:
        mark_best(study.track(best.run_name), [study.track(t.run_name) for t in finished])
    return StudyResult(path, trials, best)
