"""A study's space as Ray Tune's: the param space, the search algorithm and the scheduler.

Trials report once per validation (``Progress.validation``): ``valid_mrr`` is what ASHA compares
at each rung and Optuna learns from; ``best_mrr`` (best-on-valid so far) selects the study's best.
"""

from __future__ import annotations

import math
from typing import Any

from distmap.errors import DistmapError
from distmap.tune.study import Param, Study

METRIC = "valid_mrr"
BEST_METRIC = "best_mrr"
POINT = "point"  # a sweep trial's config: {POINT: {key: value}}


def _domain(param: Param) -> Any:
    from ray import tune

    kind, values = param.kind, param.values
    if kind == "grid":
        return tune.grid_search(values)
    if kind == "choice":
        return tune.choice(values)
    if kind == "randint":
        return tune.randint(*values)
    return tune.uniform(*values) if kind == "uniform" else tune.loguniform(*values)


def param_space(study: Study) -> dict[str, Any]:
    """Tune's param space; a sweep is one grid over whole points (a trial per point)."""
    from ray import tune

    if study.cfg.search.algorithm == "sweep":
        return {POINT: tune.grid_search(study.sweep_points())}
    return {key: _domain(param) for key, param in study.space.items()}


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's training-config values from its Tune config (either layout)."""
    return dict(config[POINT]) if POINT in config else dict(config)


def num_samples(study: Study) -> int:
    return 1 if study.cfg.search.algorithm == "sweep" else study.cfg.search.num_samples


def search_algorithm(study: Study) -> Any:
    """None (Tune's grid/random variant generator) or Optuna's TPE, seeded."""
    search = study.cfg.search
    if search.algorithm != "optuna":
        return None
    try:
        import optuna
    except ImportError:
        raise DistmapError("search.algorithm: optuna needs the tune extra (pip install optuna==5.0.0)") from None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=search.seed))


def validations(study: Study) -> int:
    """How many validations a trial reports: every ``valid_every`` epochs and after the last one."""
    t = study.base.train
    return math.ceil(t.epochs / t.valid_every)


def scheduler(study: Study) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = study.cfg.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max(validations(study) + 1, s.grace_period),  # + the final report after testing
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )
