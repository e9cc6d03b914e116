"""MLflow logging for one training run; a no-op when tracking is disabled.

The default store is a local SQLite file (this MLflow version refuses a plain ``./mlruns``
file store), with artifacts in a folder beside it.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distmap.config import TrackConfig


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///<path>`` tracking URI, or None for other stores."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def _artifact_root(tracking_uri: str) -> str | None:
    """``sqlite:///x/mlflow.db`` -> ``file:///abs/x/mlartifacts``: artifacts stay beside the store."""
    db = sqlite_path(tracking_uri)
    return None if db is None else (db.parent.absolute() / "mlartifacts").as_uri()


COMMAND_ENV = "DISTMAP_COMMAND"


CODE_PATHS = ("distmap", "configs", "jobs", "benchmarks", "pyproject.toml")
"""What decides a result: a run or benchmark from a checkout with these changed is marked dirty."""


def source_commit() -> str:
    """The commit of the distmap checkout that runs (``+dirty`` when its code or configs differ from
    it; an edited RESULTS.md does not change a number), or the package version outside a git checkout:
    every result names the code that produced it."""
    from distmap import __version__

    checkout = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=checkout, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return f"distmap {__version__}"
    return commit + ("+dirty" if dirty else "")


"""The command line that started a run, handed to Ray workers (whose own argv is Ray's worker script)."""


def _create_store(tracking_uri: str) -> None:
    """Create a fresh SQLite store with its artifact root beside it. Left to MLflow, the store's
    auto-created "Default" experiment would get ``./mlruns`` under whatever folder the process
    runs in: on a Ray worker, Ray's session folder."""
    db = sqlite_path(tracking_uri)
    if db is None or db.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(tracking_uri, _artifact_root(tracking_uri))


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise opening a SQLite store: two runs creating a fresh ``mlflow.db`` at once race in
    MLflow's schema migration ("duplicate column name")."""
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    lock_path = db.with_name(db.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _unfinished_run(mlflow: Any, experiment_id: str, run_name: str, params: dict[str, Any]) -> str | None:
    """A run of this name left RUNNING by a killed process (before it saved a checkpoint holding
    its id) with the same params: continue it rather than leave a run that never ends beside a new
    one. One with other params (the run was restarted with a changed config) is closed as KILLED,
    so its params never stand for the new run's."""
    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        return None
    if runs[0].data.params == {k: str(v) for k, v in params.items()}:
        return runs[0].info.run_id
    mlflow.MlflowClient().set_terminated(runs[0].info.run_id, status="KILLED")
    return None


def mlflow_client(tracking_uri: str) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def find_run(cfg: TrackConfig) -> Any | None:
    """The newest MLflow run named ``cfg.run_name`` in ``cfg.experiment``, or None: how a finished
    run's record is found again (a study's driver, the diagnostics that add metrics to it)."""
    client = mlflow_client(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.run_name = '{cfg.run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


class Tracker:
    """Logs params, per-epoch metrics and artifacts of one run to MLflow."""

    def __init__(self, cfg: TrackConfig) -> None:
        self.cfg = cfg
        self.run_id: str | None = None
        self._mlflow: Any = None

    def start(self, run_name: str, params: dict[str, Any], run_id: str | None = None) -> str | None:
        """Start (or, with ``run_id``, continue after a resume) the MLflow run."""
        if not self.cfg.enabled:
            return None
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(self.cfg.tracking_uri)
        with _store_lock(self.cfg.tracking_uri):
            _create_store(self.cfg.tracking_uri)
            experiment = mlflow.get_experiment_by_name(self.cfg.experiment)
            experiment_id = (
                experiment.experiment_id
                if experiment
                else mlflow.create_experiment(self.cfg.experiment, _artifact_root(self.cfg.tracking_uri))
            )
            resumed = run_id or _unfinished_run(mlflow, experiment_id, run_name, params)
            run = mlflow.start_run(run_id=resumed, run_name=None if resumed else run_name, experiment_id=experiment_id)
        self.run_id = run.info.run_id
        if resumed is None:
            mlflow.log_params(params)
            command = os.environ.get(COMMAND_ENV) or shlex.join(sys.argv)
            mlflow.set_tags(
                {"mlflow.source.name": command, "distmap.command": command, "distmap.commit": source_commit()}
            )
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow:
            clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items()}
            self._mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._mlflow:
            self._mlflow.set_tags(tags)

    def log_artifact(self, path: Path) -> None:
        if self._mlflow:
            self._mlflow.log_artifact(str(path))

    def finish(self, status: str = "FINISHED") -> None:
        if self._mlflow:
            self._mlflow.end_run(status=status)
            self._mlflow = None
