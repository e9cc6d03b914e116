"""`ray job submit` to a Ray head this test starts on 127.0.0.1 (and stops by PID): the job trains
a small dataset on 2 sharded workers and evaluates it; the head listens on loopback only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from distmap.distributed.collectives import free_port
from distmap.distributed.loopback import LOOPBACK_ENV

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


@pytest.fixture
def head(short_dir: Path) -> Iterator[tuple[str, int, Path]]:
    """A Ray head on 127.0.0.1 in a session of its own (every head process inherits it)."""
    temp = short_dir
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
    command = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--",
        sys.executable,
        str(REPO / "jobs" / "train.py"),
        str(config),
    ]
    for _ in range(20):  # the head's job agent can take a while to come up on a loaded machine
        submit = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if "No available agent" not in submit.stdout + submit.stderr:
            break
        time.sleep(3)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout + submit.stderr
    summary = json.loads((temp / "runs" / "job" / "metrics.json").read_text())
    assert summary["epochs_run"] == 4
    assert 0 < summary["test"]["both"]["mrr"] <= 1
    pids = session_pids(session)
    assert len(pids) > 5, "the head's processes should share the session of `ray start`"
    assert listening_addresses(pids) <= {"127.0.0.1", "[::ffff:127.0.0.1]"}
