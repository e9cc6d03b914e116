"""What ``distmap report`` draws, read out of an MLflow store into plain records.

Every run in the store is read once: its label, dataset and modalities (from its params), its
final metrics, the per-epoch histories the figures need, and the study tags. Runs that did not
finish are left out of the figures (a failed or stopped trial has no test metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distmap.track import mlflow_client

HISTORIES = ("loss", "valid/both/mrr", "probe/spread")
COST_RUN, COST_EXPERIMENT = "align-cost", "benchmarks"


@dataclass
class RunRecord:
    experiment: str
    name: str
    label: str
    dataset: str
    modalities: list[str]
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    start_time: int = 0  # ms since the epoch: "the newest run" across experiments
    wdist_time: int = 0  # when ``distmap wdist`` last measured it (ms), 0 if never: Fig. 1 takes the newest

    @property
    def study(self) -> str | None:
        return self.tags.get("distmap.study")

    @property
    def trial_params(self) -> dict[str, Any]:
        return json.loads(self.tags.get("distmap.trial_params", "{}"))

    @property
    def title(self) -> str:
        """``wn9-img, structure + text``: what every figure's title says about the data."""
        return f"{self.dataset}, {' + '.join(['structure', *self.modalities])}"


def _label(params: dict[str, str], name: str) -> str:
    return params.get("model.label") or params.get("model.name") or name


def _modalities(params: dict[str, str]) -> list[str]:
    text = params.get("data.modalities", "[]")
    return [m.strip(" '\"") for m in text.strip("[]").split(",") if m.strip(" '\"")]


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) by step; a resumed run logs again the epochs after its checkpoint: the newest value counts."""
    newest = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    return sorted(newest.items())


def read_store(tracking_uri: str) -> tuple[list[RunRecord], dict[str, list[tuple[int, float]]] | None]:
    """(finished training runs, the newest alignment-cost benchmark's metrics by N or None)."""
    client = mlflow_client(tracking_uri)
    runs, cost = [], None
    for experiment in client.search_experiments():
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
        for run in found:
            if experiment.name == COST_EXPERIMENT:
                if run.info.run_name == COST_RUN and cost is None:
                    cost = {k: _history(client, run.info.run_id, k) for k in run.data.metrics}
                continue
            params = run.data.params
            if "data.path" not in params:
                continue
            record = RunRecord(
                experiment.name,
                run.info.run_name,
                _label(params, run.info.run_name),
                Path(params["data.path"]).name,
                _modalities(params),
                params,
                run.data.tags,
                run.data.metrics,
            )
            record.history = {k: _history(client, run.info.run_id, k) for k in HISTORIES if k in run.data.metrics}
            record.start_time = run.info.start_time or 0
            record.wdist_time = max(
                (
                    m.timestamp
                    for k in run.data.metrics
                    if k.startswith("wdist/")
                    for m in client.get_metric_history(run.info.run_id, k)
                ),
                default=0,
            )
            runs.append(record)
    return runs, cost
