"""`ray job submit` to a Ray head these tests start on 127.0.0.1 (and stop by PID): a job trains a
small dataset on 2 sharded workers and evaluates it; the head listens on loopback only. Submitted as
the README shows it (``--working-dir .``, relative paths, ``--root $PWD``), the run, its checkpoint
and its MLflow store land in the checkout; without ``--root`` the job stops with one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from distmap.config import RAY_JOB_CONFIG_ENV, load_config
from distmap.distributed.collectives import free_port
from distmap.distributed.loopback import LOOPBACK_ENV
from distmap.errors import ConfigError
from distmap.track import mlflow_client

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def session_pids(session: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,sid"], capture_output=True, text=True).stdout
    return {int(p) for p, s in (line.split() for line in out.splitlines()[1:]) if int(s) == session}


def listening_addresses(pids: set[int]) -> set[str]:
    """Local addresses of the TCP listeners owned by ``pids`` (`ss -ltnpH`)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return {
        line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)
    }


def stop_session(session: int) -> None:
    """Stop the head's processes by PID (`ray stop` would kill every Ray on the machine)."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(session):
            os.kill(pid, signum)
        deadline = time.monotonic() + 10
        while session_pids(session) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[str, int, Path]]:
    """A Ray head on 127.0.0.1 in a session of its own (every head process inherits it), shared by
    this file's jobs; its folder is short, as Ray's socket paths must stay under 108 bytes."""
    temp = Path(tempfile.mkdtemp(prefix="dm-", dir="/tmp"))
    dashboard = free_port()
    start = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # every port of its own: another Ray on the machine (a study, a second test run) holds the
            # defaults, and a head whose job agent cannot bind its port never takes a job
            *(
                f"--{name}={free_port()}"
                for name in (
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "metrics-export-port",
                    "runtime-env-agent-port",
                    "ray-client-server-port",
                    "node-manager-port",
                    "object-manager-port",
                )
            ),
            "--num-cpus=2",
            "--disable-usage-stats",
            f"--temp-dir={temp / 'ray'}",
        ],
        env={**os.environ, **LOOPBACK_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output, _ = start.communicate(timeout=120)
    try:
        assert start.returncode == 0, output[-2000:]
        yield f"http://127.0.0.1:{dashboard}", start.pid, temp
    finally:
        stop_session(start.pid)
        shutil.rmtree(temp, ignore_errors=True)


def submit(address: str, entrypoint: list[str], working_dir: Path | None = None) -> subprocess.CompletedProcess:
    """`ray job submit --address ADDRESS [--working-dir .] -- ENTRYPOINT`, run in ``working_dir``."""
    upload = ["--working-dir", "."] if working_dir is not None else []
    command = [RAY, "job", "submit", "--address", address, *upload, "--", *entrypoint]
    for _ in range(20):  # the head's job agent can take a while to come up on a loaded machine
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=working_dir)
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(3)
    return done


@pytest.fixture
def in_checkout(ring_dataset: Path) -> Iterator[Path]:
    """A git-ignored folder of this checkout (under runs/, as datasets/ is, so Ray's working-dir upload
    leaves it out) holding a copy of the ring dataset and a job config whose paths are all relative to
    the checkout; the job's outputs go there too. Its path relative to the checkout."""
    folder = Path("runs") / f"test-ray-job-{uuid.uuid4().hex[:8]}"
    shutil.copytree(ring_dataset, REPO / folder / "dataset")
    config = {
        "data": {"path": str(folder / "dataset")},
        "model": {"name": "complex", "rank": 8, "init_scale": 0.1},
        "train": {"epochs": 1, "batch_size": 40, "valid_every": 1},
        "track": {
            "tracking_uri": f"sqlite:///{folder}/mlflow.db",
            "output_dir": str(folder / "runs"),
            "run_name": "job",
        },
    }
    (REPO / folder / "job.yaml").write_text(yaml.safe_dump(config))
    yield folder
    shutil.rmtree(REPO / folder, ignore_errors=True)


def test_job_submit_trains_on_two_workers(ring_dataset: Path, head: tuple[str, int, Path]) -> None:
    address, session, temp = head
    config = temp / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": str(ring_dataset)},
                "model": {"name": "complex", "rank": 8, "init_scale": 0.1},
                "train": {"epochs": 4, "batch_size": 40, "valid_every": 2, "reg_weight": 1e-3},
                "track": {
                    "tracking_uri": f"sqlite:///{temp}/mlflow.db",
                    "output_dir": str(temp / "runs"),
                    "run_name": "job",
                },
                "scale": {"workers": 2, "address": "auto"},
            }
        )
    )
    done = submit(address, [sys.executable, str(REPO / "jobs" / "train.py"), str(config)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    summary = json.loads((temp / "runs" / "job" / "metrics.json").read_text())
    assert summary["epochs_run"] == 4
    assert 0 < summary["test"]["both"]["mrr"] <= 1
    pids = session_pids(session)
    assert len(pids) > 5, "the head's processes should share the session of `ray start`"
    assert listening_addresses(pids) <= {"127.0.0.1", "[::ffff:127.0.0.1]"}


README_ARGS = ["--set", "scale.workers=2", "--set", "scale.address=auto"]


def test_job_submit_as_in_the_readme_writes_to_the_checkout(in_checkout: Path, head: tuple[str, int, Path]) -> None:
    address = head[0]
    job = [sys.executable, "jobs/train.py", str(in_checkout / "job.yaml"), "--root", str(REPO), *README_ARGS]
    done = submit(address, job, working_dir=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    folder = REPO / in_checkout
    summary = json.loads((folder / "runs" / "job" / "metrics.json").read_text())
    assert summary["epochs_run"] == 1
    assert list((folder / "runs" / "ray_results" / "job").glob("checkpoint_*")), "no checkpoint in the checkout"
    client = mlflow_client(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("distmap").experiment_id])
    assert (run.info.run_name, run.info.status) == ("job", "FINISHED")
    assert 0 < run.data.metrics["test/both/mrr"] <= 1


def test_job_submit_without_root_stops_with_one_line(in_checkout: Path, head: tuple[str, int, Path]) -> None:
    address = head[0]
    done = submit(address, [sys.executable, "jobs/train.py", str(in_checkout / "job.yaml"), *README_ARGS], REPO)
    assert done.returncode != 0
    logs = done.stdout + done.stderr
    lines = {x for x in logs.splitlines() if x.startswith("distmap train: error:")}  # Ray repeats the logs
    assert lines == {
        f"distmap train: error: config '{in_checkout / 'job.yaml'}' is relative and this job runs in Ray's "
        "temporary copy of the working dir, which leaves out git-ignored files (datasets/, runs/, mlflow.db) and is "
        "deleted after the job: pass --root $PWD (the checkout, as seen by the machine that runs the job) or give "
        "absolute paths"
    }
    assert "Traceback" not in logs
    assert not (REPO / in_checkout / "runs").exists()


def test_relative_config_paths_are_refused_in_a_ray_working_dir_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray unpacks a job's working dir under runtime_resources/working_dir_files, in a folder named
    after the package its job config names; either is enough to tell. Absolute paths are accepted."""
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": "datasets/ring"}, "model": {"name": "complex"}}))
    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    elsewhere = tmp_path / "session" / "unpacked" / "_ray_pkg_0123abcd"
    for folder in (copy, elsewhere):
        folder.mkdir(parents=True)
    load_config(config)  # not in a copy
    monkeypatch.chdir(copy)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value).startswith(
        f"{config}: data.path 'datasets/ring', track.output_dir 'runs', track.tracking_uri 'sqlite:///mlflow.db' "
        "are relative and this job runs in Ray's temporary copy of the working dir"
    )
    absolute = [f"data.path={tmp_path}/ring", f"track.output_dir={tmp_path}/runs", "track.tracking_uri=http://mlflow"]
    load_config(config, absolute)
    with pytest.raises(ConfigError, match=r"^--set data.path=ring: data.path 'ring' is relative"):
        load_config(config, [*absolute, "data.path=ring"])
    monkeypatch.chdir(elsewhere)
    load_config(config)  # no job names that package
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, '{"runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"}}')
    with pytest.raises(ConfigError, match=r"data\.path 'datasets/ring', .* are relative"):
        load_config(config)
