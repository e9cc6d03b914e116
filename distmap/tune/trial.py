"""One trial of a study: a full training run (one process, or P Ray Train workers) with the
trial's values, named after the trial so that a resumed study resumes the run from its checkpoint.

The run logs itself to MLflow (params, per-epoch metrics, test metrics, artifacts) in the study's
experiment. A trial whose run raises is recorded as a FAILED MLflow run with the error, even
when it failed before its run could start (a value the dataset cannot serve), and Tune goes on.
"""

from __future__ import annotations

import json
from typing import Any

from distmap.tune.record import record_failure, tag_run
from distmap.tune.search import BEST_METRIC, METRIC, trial_params
from distmap.tune.study import Study

STUDY_TAG = "distmap.study"
TRIAL_TAG = "distmap.trial"
PARAMS_TAG = "distmap.trial_params"


def trial_run_name(study: Study, trial_id: str) -> str:
    return f"{study.name}-{trial_id}"


def trial_tags(study: Study, trial_id: str, params: dict[str, Any]) -> dict[str, str]:
    """What ties an MLflow run to its study and trial (the report groups a study's runs by them)."""
    return {STUDY_TAG: study.name, TRIAL_TAG: trial_id, PARAMS_TAG: json.dumps(params, sort_keys=True)}


def train_trial(config: dict[str, Any], study: Study) -> None:
    """Tune's function trainable: reports every validation (from the run's checkpoints), then the
    best-on-valid model's valid and test MRR."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    name = trial_run_name(study, trial_id)
    params = trial_params(config)
    tags = trial_tags(study, trial_id, params)
    track = study.track(name)
    try:
        cfg = study.trial_config(params, name)
        if cfg.scale.workers:
            from ray.tune.integration.ray_train import TuneReportCallback

            from distmap.distributed.trainer import fit_distributed

            summary = fit_distributed(cfg, callbacks=[TuneReportCallback()])
            valid, test = summary["valid"]["both"]["mrr"], summary["test"]["both"]["mrr"]
        else:
            from distmap.train.fit import fit

            result = fit(cfg, report=tune.report)
            valid, test = result.valid.metrics["both"]["mrr"], result.test.metrics["both"]["mrr"]
    except Exception as err:
        record_failure(track, params, tags, err)
        raise
    tag_run(track, tags)
    tune.report({METRIC: valid, BEST_METRIC: valid, "test_mrr": test})
