"""Fig. 2a's probe in a single-process run: the spread of named entities' fused rows per epoch, in
MLflow and metrics.json; bad names are refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from distmap.config import config_from_dict
from distmap.errors import ConfigError, DistmapError
from distmap.train.fit import fit
from distmap.train.probe import pairwise_spread


def probe_config(dataset: Path, out: Path, probe: list[str]) -> dict:
    return {
        "data": {"path": str(dataset)},
        "model": {"name": "complex", "rank": 8, "init_scale": 0.1},
        "train": {"epochs": 3, "batch_size": 40, "valid_every": 3},
        "track": {
            "tracking_uri": f"sqlite:///{out}/mlflow.db",
            "output_dir": str(out / "runs"),
            "experiment": "probe",
            "probe_entities": probe,
        },
    }


def test_spread_is_the_sum_of_pairwise_distances() -> None:
    rows = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert pairwise_spread(rows) == pytest.approx(5 + 4 + 3)


def test_spread_is_logged_per_epoch(ring_dataset: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(probe_config(ring_dataset, tmp_path, ["e000", "e001", "e002"]))
    result = fit(cfg, log=lambda _: None)
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["probe"]["entities"] == ["e000", "e001", "e002"]
    assert saved["probe"]["spread"] == [h["probe/spread"] for h in result.history]
    assert len(saved["probe"]["spread"]) == 3
    client = mlflow.MlflowClient(tracking_uri=cfg.track.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("probe").experiment_id])
    logged = client.get_metric_history(run.info.run_id, "probe/spread")
    assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(saved["probe"]["spread"])


def test_bad_probe_names_are_refused(ring_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"track\.probe_entities: a spread needs at least two"):
        config_from_dict(probe_config(ring_dataset, tmp_path, ["e000"]))
    cfg = config_from_dict(probe_config(ring_dataset, tmp_path, ["e000", "nope"]))
    with pytest.raises(DistmapError, match=r"track\.probe_entities: nope not an entity"):
        fit(cfg, log=lambda _: None)
    assert not (tmp_path / "runs").exists()
