"""MLflow tracking: runs started at once against a fresh SQLite store all succeed."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow

from distmap.config import TrackConfig
from distmap.track import Tracker

SCRIPT = """
import sys
from distmap.config import TrackConfig
from distmap.track import Tracker
tracker = Tracker(TrackConfig(tracking_uri=f"sqlite:///{sys.argv[1]}/mlflow.db", experiment="race"))
tracker.start(sys.argv[2], {"seed": sys.argv[2]})
tracker.log_metrics({"hits@1": 0.5}, step=1)
tracker.finish()
"""


def test_concurrent_runs_on_a_fresh_store(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(tmp_path), str(i)],
            stderr=subprocess.PIPE,
            env={**os.environ, "DISTMAP_COMMAND": "distmap train run.yaml"},
        )
        for i in range(3)
    ]
    errors = [p.communicate()[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    assert all(r.data.metrics["hits_at_1"] == 0.5 for r in runs)
    experiment = client.get_experiment_by_name("race")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    # MLflow's own "Default" experiment keeps its artifacts beside the store too, not under the cwd.
    assert client.get_experiment("0").artifact_location == (tmp_path / "mlartifacts" / "0").as_uri()
    assert {r.data.tags["mlflow.source.name"] for r in runs} == {"distmap train run.yaml"}


KILLED = """
import os, sys
from distmap.config import TrackConfig
from distmap.track import Tracker
tracker = Tracker(TrackConfig(tracking_uri=f"sqlite:///{sys.argv[1]}/mlflow.db", experiment="resume"))
print(tracker.start("job", {"a": 1}))
sys.stdout.flush()
os._exit(1)
"""


def test_a_run_left_running_by_a_killed_process_is_continued(tmp_path: Path) -> None:
    killed = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], capture_output=True, text=True)
    run_id = killed.stdout.strip()
    cfg = TrackConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="resume")
    again = Tracker(cfg)
    assert again.start("job", {"a": 1}) == run_id
    again.finish()
    fresh = Tracker(cfg)
    assert fresh.start("job", {"a": 1}) != run_id  # a finished run is never reopened
    fresh.finish()


def test_a_killed_run_with_other_params_is_closed_not_continued(tmp_path: Path) -> None:
    """Restarting a killed run under a changed config must not report the new run under the old params."""
    killed = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], capture_output=True, text=True)
    old_id = killed.stdout.strip()
    cfg = TrackConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="resume")
    changed = Tracker(cfg)
    new_id = changed.start("job", {"a": 2})
    changed.finish()
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking_uri)
    assert new_id != old_id
    assert client.get_run(new_id).data.params == {"a": "2"}
    assert client.get_run(old_id).info.status == "KILLED"
