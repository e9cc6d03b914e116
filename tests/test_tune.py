"""Studies: a study's YAML is checked against the training config at load time; a tiny study on
local Ray logs every trial to MLflow (one failing), marks the best, and resumes after an interrupt
without rerunning finished trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from distmap.cli import main
from distmap.config import TrackConfig
from distmap.errors import ConfigError
from distmap.tune.record import ERROR_TAG, STOPPED_TAG, close_stopped
from distmap.tune.study import load_study
from distmap.tune.trial import PARAMS_TAG, STUDY_TAG
from tests.conftest import REPO


def write_study(folder: Path, dataset: Path, space: dict, **study: object) -> Path:
    train = {
        "data": {"path": str(dataset)},
        "model": {"name": "complex", "rank": 8, "init_scale": 0.1},
        "train": {"epochs": 4, "batch_size": 40, "valid_every": 2, "threads": 1},
        "track": {"tracking_uri": f"sqlite:///{folder}/mlflow.db", "output_dir": str(folder / "runs")},
    }
    (folder / "train.yaml").write_text(yaml.safe_dump(train))
    spec = {"name": "tiny", "train": str(folder / "train.yaml"), "space": space, **study}
    (folder / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "study.yaml"


@pytest.mark.parametrize(
    ("space", "study", "message"),
    [
        ({"align.lamda_align": {"grid": [0.1]}}, {}, r"space\.align\.lamda_align: not a key .*did you mean"),
        ({"train.lr": {"grid": [0.1, -1]}}, {}, r"space\.train\.lr\.grid\[1\]: -1 is refused .*train\.lr: must be > 0"),
        ({"train.lr": {"grid": [0.1], "choice": [0.2]}}, {}, r"space\.train\.lr: give exactly one of"),
        ({"train.lr": {"uniform": [0.5, 0.1]}}, {}, r"space\.train\.lr\.uniform: needs \[low, high\]"),
        ({"train.lr": {"grid": [0.1]}}, {"serach": {}}, r"serach: unknown key"),
        ({"train.lr": {"grid": [0.1]}}, {"search": {"algorithm": "optuna"}}, r"space\.train\.lr: optuna proposes"),
        ({"train.lr": {"choice": [0.1]}}, {"search": {"algorithm": "sweep"}}, r"space\.train\.lr: a sweep takes grid"),
    ],
)
def test_a_bad_study_is_refused_at_load_time(
    ring_dataset: Path, tmp_path: Path, space: dict, study: dict, message: str
) -> None:
    path = write_study(tmp_path, ring_dataset, space, **study)
    with pytest.raises(ConfigError, match=message) as caught:
        load_study(path)
    assert str(caught.value).startswith(str(path))


def test_a_sweep_varies_one_key_at_a_time_around_the_base(ring_dataset: Path, tmp_path: Path) -> None:
    space = {"train.lr": {"grid": [0.05, 0.1, 0.2]}, "model.rank": {"grid": [4, 8]}}
    study = load_study(write_study(tmp_path, ring_dataset, space, search={"algorithm": "sweep"}))
    assert study.sweep_points() == [{}, {"train.lr": 0.05}, {"train.lr": 0.2}, {"model.rank": 4}]
    cfg = study.trial_config({"train.lr": 0.05}, "tiny-x")
    assert (cfg.train.lr, cfg.track.run_name, cfg.track.experiment) == (0.05, "tiny-x", "tiny")
    assert Path(cfg.data.path).is_absolute()


def test_a_run_the_scheduler_stopped_is_closed_as_killed(tmp_path: Path) -> None:
    track = TrackConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="tiny", run_name="tiny-1")
    # left RUNNING in the store, as a stopped trial leaves it (through the client: no run stays active here)
    client = mlflow.MlflowClient(track.tracking_uri)
    client.create_run(client.create_experiment("tiny"), run_name="tiny-1")
    close_stopped(track, {STUDY_TAG: "tiny"})
    (run,) = mlflow.MlflowClient(track.tracking_uri).search_runs(["1"])
    assert run.info.status == "KILLED"
    assert STOPPED_TAG in run.data.tags
    assert run.data.tags[STUDY_TAG] == "tiny"


def runs_by_name(store: str, experiment: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=store)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    names = [r.info.run_name for r in found]
    assert len(names) == len(set(names)), f"a trial was logged twice: {names}"
    return {r.info.run_name: r for r in found}


def test_a_tiny_study_logs_every_trial_and_marks_failures_and_the_best(
    ring_dataset: Path, short_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    # A sweep: the base, lr 0.05, and a modality the dataset lacks (that trial raises).
    space = {"train.lr": {"grid": [0.05]}, "data.modalities": {"grid": [["visual"]]}}
    path = write_study(short_dir, ring_dataset, space, search={"algorithm": "sweep"}, scheduler={"name": "fifo"})
    assert main(["tune", str(path)]) == 0
    out = capsys.readouterr().out
    store = f"sqlite:///{short_dir}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=store)
    runs = runs_by_name(store, "tiny")
    assert len(runs) == 3
    failed = [r for r in runs.values() if r.info.status == "FAILED"]
    finished = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert len(failed) == 1
    assert len(finished) == 2
    assert "has no 'visual' features" in failed[0].data.tags[ERROR_TAG]
    assert failed[0].data.tags[PARAMS_TAG] == '{"data.modalities": ["visual"]}'
    for run in finished:
        assert run.data.tags[STUDY_TAG] == "tiny"
        assert run.data.params["train.lr"] in ("0.1", "0.05")
        assert "test/both/mrr" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "metrics.json"}
    best = max(finished, key=lambda r: r.data.metrics["valid/both/mrr"])
    assert best.data.tags["distmap.study_best"] == "true"
    assert sum("distmap.study_best" in r.data.tags for r in runs.values()) == 1
    assert client.get_experiment_by_name("tiny").tags["distmap.best_run"] == best.info.run_id
    assert f"(MLflow run {best.info.run_name})" in out


def test_an_interrupted_study_resumes_without_rerunning_finished_trials(ring_dataset: Path, short_dir: Path) -> None:
    # Trial 0 trains 2 epochs, trial 1 many: interrupt (SIGINT) while trial 1 runs, then resume.
    space = {"train.epochs": {"grid": [2, 200]}}
    path = write_study(short_dir, ring_dataset, space, scheduler={"name": "fifo"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "distmap.cli", "tune", str(path)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = short_dir / "runs"
    # A bound on liveness, not on speed: on a loaded machine Ray's trial workers (nice 15) wait for the
    # CPU, and trial 0 took over 120 s beside two training runs (2026-12-08); idle it takes seconds.
    deadline = time.time() + 600
    while time.time() < deadline:
        done = list(runs.glob("tiny-*/metrics.json"))
        started = [p for p in runs.glob("tiny-*/checkpoint.pt") if not (p.parent / "metrics.json").exists()]
        if done and started:
            break
        time.sleep(0.2)
    assert done, "trial 0 did not finish in time"
    assert started, "trial 1 did not start in time"
    first.send_signal(signal.SIGINT)
    log, _ = first.communicate(timeout=120)
    assert first.returncode == 130, log
    assert "run the same command again to resume" in log
    store = f"sqlite:///{short_dir}/mlflow.db"
    before = runs_by_name(store, "tiny")
    (finished,) = [r for r in before.values() if r.info.status == "FINISHED"]
    mtime = done[0].stat().st_mtime_ns

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming study tiny" in second.stdout
    after = runs_by_name(store, "tiny")
    assert len(after) == 2
    assert all(r.info.status == "FINISHED" for r in after.values())
    kept = after[finished.info.run_name]
    assert (kept.info.run_id, kept.info.end_time) == (finished.info.run_id, finished.info.end_time)
    assert done[0].stat().st_mtime_ns == mtime, "the finished trial was run again"
    resumed = next(r for name, r in after.items() if name != finished.info.run_name)
    client = mlflow.MlflowClient(tracking_uri=store)
    assert len(client.get_metric_history(resumed.info.run_id, "loss")) == 200
