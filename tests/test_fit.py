"""The training run: it learns, logs to MLflow, selects on valid, stops early and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from distmap.cli import main
from distmap.config import Config, config_from_dict
from distmap.data.prepare import prepare_dataset
from distmap.errors import DistmapError
from distmap.track import source_commit
from distmap.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from distmap.train.fit import fit
from tests.conftest import ring_graph, write_triples


def make_config(dataset: Path, tmp_path: Path, **train: object) -> Config:
    return config_from_dict(
        {
            "data": {"path": str(dataset)},
            "model": {"name": train.pop("model", "complex"), "rank": 16, "init_scale": 0.1},
            "train": {"epochs": 6, "batch_size": 32, "lr": 0.1, "reg_weight": 1e-3, "valid_every": 2, **train},
            "track": {
                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                "output_dir": str(tmp_path / "runs"),
                "experiment": "test",
            },
        }
    )


def quiet(_: str) -> None:
    pass


def test_learns_logs_and_writes_outputs(ring_dataset: Path, tmp_path: Path) -> None:
    cfg = make_config(ring_dataset, tmp_path, epochs=20, valid_every=5)
    result = fit(cfg, log=quiet)
    assert result.test.metrics["both"]["mrr"] > 0.5, result.test.table()
    assert [h["epoch"] for h in result.history] == list(range(1, 21))
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"checkpoint.pt", "config.yaml", "metrics.json", "training_curve.png"} <= files
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["test"]["both"]["mrr"] == pytest.approx(result.test.metrics["both"]["mrr"])
    assert saved["commit"] == source_commit()  # the code that produced the numbers

    client = mlflow.MlflowClient(tracking_uri=cfg.track.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.data.params["model.name"] == "complex"
    assert run.data.params["train.epochs"] == "20"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 20
    assert run.data.tags["distmap.commit"] == source_commit()
    assert len(client.get_metric_history(run.info.run_id, "valid/both/mrr")) == 4
    assert run.data.metrics["test/both/mrr"] == pytest.approx(result.test.metrics["both"]["mrr"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "config.yaml",
        "training_curve.png",
        "metrics.json",
    }


def test_metrics_name_the_commit_the_run_started_from(
    ring_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit made while a run trains is not the code that run executes: metrics.json keeps the first."""
    commits = iter(["started-at", "checked-out-later", "checked-out-later"])
    monkeypatch.setattr("distmap.train.fit.source_commit", lambda: next(commits))
    result = fit(make_config(ring_dataset, tmp_path, epochs=2, valid_every=1), log=quiet)
    assert json.loads((result.run_dir / "metrics.json").read_text())["commit"] == "started-at"


@pytest.mark.parametrize("model", ["transe", "distmult", "rotate"])
def test_every_model_trains(ring_dataset: Path, tmp_path: Path, model: str) -> None:
    cfg = make_config(ring_dataset, tmp_path, model=model, epochs=4, optimizer="adam", lr=0.01)
    cfg.track.enabled = False
    result = fit(cfg, log=quiet)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert 0 < result.test.metrics["both"]["mrr"] <= 1


def test_resume_is_exact(ring_dataset: Path, tmp_path: Path) -> None:
    straight = make_config(ring_dataset, tmp_path / "a", epochs=6)
    straight.track.enabled = False
    whole = fit(straight, log=quiet)

    first = make_config(ring_dataset, tmp_path / "b", epochs=4)
    first.track.enabled = False
    fit(first, log=quiet)
    second = make_config(ring_dataset, tmp_path / "b", epochs=6)
    second.track.enabled = False
    messages: list[str] = []
    resumed = fit(second, log=messages.append)
    assert any("resuming" in m and "epoch 4" in m for m in messages)

    a = load_checkpoint(whole.run_dir / CHECKPOINT_NAME)
    b = load_checkpoint(resumed.run_dir / CHECKPOINT_NAME)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    assert whole.test.metrics == resumed.test.metrics


def test_resume_refuses_a_different_config(ring_dataset: Path, tmp_path: Path) -> None:
    cfg = make_config(ring_dataset, tmp_path, epochs=2)
    cfg.track.enabled = False
    fit(cfg, log=quiet)
    cfg.train.lr = 0.5
    with pytest.raises(DistmapError, match="different config"):
        fit(cfg, log=quiet)


def test_early_stopping_keeps_best(ring_dataset: Path, tmp_path: Path) -> None:
    cfg = make_config(ring_dataset, tmp_path, epochs=50, valid_every=1, patience=2, lr=1e-9)
    cfg.track.enabled = False
    result = fit(cfg, log=quiet)
    assert len(result.history) < 50
    assert result.best_epoch == 1


def test_cli_train_evaluate_and_errors(ring_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(make_config(ring_dataset, tmp_path, epochs=2).to_yaml())
    assert main(["train", str(config), "--set", "track.enabled=false", "--set", "track.run_name=cli"]) == 0
    assert main(["evaluate", str(tmp_path / "runs" / "cli"), "--tie", "pessimistic"]) == 0
    assert "ties: pessimistic" in capsys.readouterr().out
    (tmp_path / "runs" / "cli" / "checkpoint.pt").unlink()
    assert main(["evaluate", str(tmp_path / "runs" / "cli")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint.pt here and no sharded checkpoint" in err
    assert "Traceback" not in err
    assert main(["train", str(config), "--set", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "--set train.lrr=1: train.lrr" in err  # the bad key came from the command line, not the file
    assert "train.lrr" in err
    assert "unknown key" in err
    assert "Traceback" not in err


@pytest.fixture
def leaky_raw(tmp_path: Path) -> Path:
    """The ring graph with 3 train triples copied into its 9 valid ones: 25 % of valid leaks."""
    splits = ring_graph()
    splits["valid"] += splits["train"][:3]
    return write_triples(tmp_path / "leaky-raw", splits)


def test_a_leaky_valid_split_is_refused_unless_allowed(
    leaky_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = tmp_path / "leaky"
    prepare_dataset(leaky_raw, dataset, log=quiet)
    config = tmp_path / "run.yaml"
    config.write_text(make_config(dataset, tmp_path, epochs=2).to_yaml())
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "25.0% of valid lines (3 of 12; 3 unique triples) also occur in train" in err
    assert "distmap prepare --clean" in err
    assert "train.allow_leaky_valid: true" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written or logged

    cfg = make_config(dataset, tmp_path, epochs=2, allow_leaky_valid=True)
    messages: list[str] = []
    fit(cfg, log=messages.append)
    warnings = [m for m in messages if m.startswith("WARNING")]
    assert len(warnings) == 1
    assert "25.0% of valid lines" in warnings[0]
    assert "train.allow_leaky_valid: true" in warnings[0]
    client = mlflow.MlflowClient(tracking_uri=cfg.track.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.data.tags["distmap.leaky_valid"] == "true"
    assert run.data.tags["distmap.valid_in_train_share"] == "0.2500"


def test_a_manifest_without_hygiene_counts_gets_them_from_the_splits(leaky_raw: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "old"
    prepare_dataset(leaky_raw, dataset, log=quiet)
    manifest = json.loads((dataset / "manifest.json").read_text())
    del manifest["split_hygiene"]  # as written before split hygiene existed
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    cfg = make_config(dataset, tmp_path, epochs=2)
    cfg.track.enabled = False
    messages: list[str] = []
    with pytest.raises(DistmapError, match=r"25\.0% of valid lines \(3 of 12"):
        fit(cfg, log=messages.append)
    assert any("has no split_hygiene" in m for m in messages)


def test_the_cleaned_dataset_trains_without_permission(leaky_raw: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "clean"
    prepare_dataset(leaky_raw, dataset, clean=True, log=quiet)
    cfg = make_config(dataset, tmp_path, epochs=2)
    cfg.track.enabled = False
    messages: list[str] = []
    result = fit(cfg, log=messages.append)
    assert result.valid.metrics["both"]["mrr"] > 0
    assert not any(m.startswith("WARNING") for m in messages)
