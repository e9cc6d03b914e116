"""A study's bookkeeping in MLflow, beside what each trial's run logs itself: failures recorded,
runs that a scheduler stopped closed as KILLED, and the study's best trial marked.

Runs are found by name (``<study>-<trial id>``, ``distmap.track.find_run``) in the study's experiment,
so the driver and the trials agree without passing run ids around, also across a resumed study.
"""

from __future__ import annotations

from typing import Any

from distmap.config import TrackConfig
from distmap.track import Tracker, find_run, mlflow_client

ERROR_TAG = "distmap.error"
BEST_TAG = "distmap.study_best"
STOPPED_TAG = "distmap.stopped"


def tag_run(track: TrackConfig, tags: dict[str, str]) -> None:
    run = find_run(track)
    if run is not None:
        client = mlflow_client(track.tracking_uri)
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)


def record_failure(track: TrackConfig, params: dict[str, Any], tags: dict[str, str], err: BaseException) -> None:
    """Mark the trial's run FAILED with the error; a trial that failed before its run started gets
    a run holding its values, so every trial shows in the experiment."""
    error = f"{type(err).__name__}: {err}".splitlines()[0][:5000]
    run = find_run(track)
    if run is None:
        tracker = Tracker(track)
        tracker.start(track.run_name, params)
        tracker.set_tags({**tags, ERROR_TAG: error})
        tracker.finish("FAILED")
        return
    tag_run(track, {**tags, ERROR_TAG: error})
    if run.info.status == "RUNNING":
        mlflow_client(track.tracking_uri).set_terminated(run.info.run_id, "FAILED")


def close_stopped(track: TrackConfig, tags: dict[str, str]) -> None:
    """The run of a trial the scheduler stopped (left RUNNING, or FAILED by the interruption): KILLED,
    tagged why."""
    run = find_run(track)
    if run is None:
        return
    tag_run(track, {**tags, STOPPED_TAG: "stopped early by the scheduler (ASHA)"})
    if run.info.status != "KILLED":
        mlflow_client(track.tracking_uri).set_terminated(run.info.run_id, "KILLED")


def mark_best(track: TrackConfig, others: list[TrackConfig]) -> str | None:
    """Tag ``track``'s run as the study's best (and the experiment with its id); untag the others."""
    best = find_run(track)
    if best is None:
        return None
    client = mlflow_client(track.tracking_uri)
    for other in others:
        run = find_run(other)
        if run is not None and run.info.run_id != best.info.run_id and BEST_TAG in run.data.tags:
            client.delete_tag(run.info.run_id, BEST_TAG)
    client.set_tag(best.info.run_id, BEST_TAG, "true")
    client.set_experiment_tag(best.info.experiment_id, "distmap.best_run", best.info.run_id)
    return best.info.run_id
