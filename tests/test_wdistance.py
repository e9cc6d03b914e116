"""Fig. 1's measure on a finished run: W2 between the projected modality rows and the structural
rows of its best checkpoint, present rows only, added to the run's MLflow record."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from distmap.align.ot import wasserstein_exact
from distmap.cli import main
from distmap.config import config_from_dict
from distmap.data.kg import KnowledgeGraph
from distmap.data.prepare import prepare_dataset
from distmap.data.shards import write_feature_shards
from distmap.diagnostics.wdistance import modality_distances
from distmap.restore import load_best_model
from distmap.train.fit import fit
from tests.conftest import ring_graph, write_triples


def test_distance_of_the_best_checkpoint_is_logged(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prepare_dataset(write_triples(tmp_path / "raw", ring_graph()), tmp_path / "ds", log=lambda _: None)
    present = np.ones(30, bool)
    present[:5] = False  # entities without the modality are left out of the measure
    features = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    write_feature_shards(tmp_path / "ds", "visual", features, present, rows_per_part=30, source="test")
    cfg = config_from_dict(
        {
            "data": {"path": str(tmp_path / "ds"), "modalities": ["visual"]},
            "model": {"name": "map", "rank": 4, "init_scale": 0.1},
            "train": {"epochs": 2, "batch_size": 40, "valid_every": 2},
            "track": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "output_dir": str(tmp_path / "runs")},
        }
    )
    result = fit(cfg, log=lambda _: None)
    d = modality_distances(result.run_dir)
    model, _ = load_best_model(result.run_dir, cfg, KnowledgeGraph.load(cfg.data.path), torch.device("cpu"))
    with torch.no_grad():
        views = model.views()
    mask = torch.from_numpy(present)
    expected = wasserstein_exact(views.projected["visual"][mask], views.structure[mask])
    assert d.distances["visual"] == pytest.approx(expected)
    assert d.entities == {"visual": 25}
    assert 0 < d.relative["visual"] < d.distances["visual"] / views.structure[mask].norm(dim=1).min()
    run = mlflow.MlflowClient(cfg.track.tracking_uri).get_run(d.mlflow_run_id)
    assert run.data.metrics["wdist/visual"] == pytest.approx(expected)
    assert main(["wdist", str(result.run_dir)]) == 0
    assert f"| {expected:.4f} |" in capsys.readouterr().out
