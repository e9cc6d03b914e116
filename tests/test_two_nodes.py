"""Ray Train across two Ray nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``), one worker per
node: the node of one worker is removed mid-run, Ray Train restarts the group and waits for a
second node, a fresh node joins, and the group resumes from the last checkpoint on it, with the
plain loop's metrics at the end.

The workers pause at the start of epoch 3, after the first checkpoint (tests/pause_hook.py), so
the node goes away at a known point; every Ray process is a child of this test's process, and
none may be left after the cluster shuts down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from distmap.distributed.loopback import set_loopback_env
from tests.pause_hook import PAUSE_DIR
from tests.test_dist import flat
from tests.test_ray_job import listening_addresses
from tests.test_ray_train import make_config

REPO = Path(__file__).resolve().parents[1]
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}  # one CPU: one Ray Train worker per node


def descendants() -> set[int]:
    """This process's children and theirs: every process the Ray cluster started."""
    ps = subprocess.Popen(["ps", "-eo", "pid,ppid"], stdout=subprocess.PIPE, text=True)
    out, _ = ps.communicate()
    children: dict[int, list[int]] = {}
    for line in out.splitlines()[1:]:
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid != ps.pid:
                found.add(pid)
                todo.append(pid)
    return found


def wait_for(what: str, test: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def pending_placement_group() -> bool:
    from ray.util import placement_group_table

    return any(pg["state"] == "PENDING" for pg in placement_group_table().values())


@pytest.fixture
def cluster(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A head without CPUs (driver, Train controller) and two one-CPU nodes, all on 127.0.0.1;
    the driver is connected. Shut down by ``cluster.shutdown()``, never ``ray stop``."""
    monkeypatch.setenv("RAY_TMPDIR", str(short_dir / "ray"))
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    monkeypatch.setenv(PAUSE_DIR, str(short_dir / "pauses"))
    # The workers import the setup hook from tests/.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    (short_dir / "ray").mkdir()
    (short_dir / "pauses").mkdir()
    set_loopback_env()
    import ray
    from ray.cluster_utils import Cluster

    # Earlier tests may have left long-lived children of pytest (multiprocessing's resource tracker).
    before = descendants()
    nodes = Cluster(
        initialize_head=True,
        head_node_args={
            **NODE,
            "num_cpus": 0,
            "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    try:
        nodes.add_node(**NODE)
        nodes.add_node(**NODE)
        ray.init(address=nodes.address, runtime_env={"worker_process_setup_hook": "tests.pause_hook.pause_hook"})
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        left = descendants() - before
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left after the cluster shut down: {sorted(left)}"


def test_two_nodes_one_removed_mid_run(ring_dataset: Path, short_dir: Path, cluster: Any) -> None:
    from distmap.distributed.trainer import fit_distributed
    from distmap.train.fit import fit

    plain = fit(make_config(ring_dataset, short_dir), log=lambda _: None)
    cfg = make_config(ring_dataset, short_dir, workers=2, max_failures=1)
    result: dict[str, Any] = {}

    def train() -> None:
        try:
            result["summary"] = fit_distributed(cfg, log=lambda _: None)
        except BaseException as err:
            result["error"] = err

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    pauses = short_dir / "pauses"
    wait_for(
        "both workers to pause after the first checkpoint", lambda: len(list(pauses.glob("paused-*"))) == 2, timeout=120
    )
    first, second = sorted(cluster.worker_nodes, key=lambda node: node.node_id)
    placed = {p.name: p.read_text(encoding="utf-8") for p in pauses.glob("paused-*")}
    assert sorted(placed.values()) == [first.node_id, second.node_id], "the two workers share a node"
    time.sleep(3)  # let the controller register the checkpoint: reports just before a crash can be lost
    cluster.remove_node(second)
    # The node joins only once the restarted group waits for it: a placement group pending.
    wait_for("the restart to wait for a second node", pending_placement_group, timeout=60)
    third = cluster.add_node(**NODE)
    thread.join(240)
    assert not thread.is_alive(), "training did not finish after the node was removed"
    if "error" in result:
        raise result["error"]
    summary = result["summary"]

    restored = {p.name: p.read_text(encoding="utf-8") for p in pauses.glob("restored-*")}
    assert sorted(restored) == ["restored-rank0", "restored-rank1"], "the restarted workers got no checkpoint"
    assert sorted(restored.values()) == sorted([first.node_id, third.node_id])
    assert flat(summary["test"]) == pytest.approx(flat(plain.test.metrics), abs=1e-4)
    assert summary["epochs_run"] == 6
    # Ray's gRPC servers listen on IPv6 sockets bound to the IPv4-mapped loopback address.
    listening = listening_addresses(descendants())
    assert listening
    assert listening <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, listening
