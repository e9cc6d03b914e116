"""MLflow tracking: runs started at once against a fresh SQLite store all succeed."""

import subprocess
import sys
from pathlib import Path

import mlflow

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
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), str(i)], stderr=subprocess.PIPE)
             for i in range(3)]
    errors = [p.communicate()[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    assert all(r.data.metrics["hits_at_1"] == 0.5 for r in runs)
    experiment = client.get_experiment_by_name("race")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
