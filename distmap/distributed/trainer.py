"""Ray Train wiring: a ``TorchTrainer`` whose workers each run ``distmap.train.fit.run`` over a
``ShardedEngine`` (gloo on CPU, NCCL on GPU, same code).

Each worker's checkpoint files go through ``ray.train.report``; Ray merges them into one
checkpoint folder and, after a worker failure (``FailureConfig``), restarts the group and hands
it back through ``ray.train.get_checkpoint()``, with any number of workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from distmap.config import Config, config_from_dict
from distmap.data.kg import KnowledgeGraph
from distmap.distributed.engine import ShardedEngine
from distmap.distributed.loopback import LoopbackTorchConfig, set_loopback_env
from distmap.errors import DistmapError
from distmap.track import COMMAND_ENV, sqlite_path
from distmap.train.fit import run, run_name


def absolute_paths(cfg: Config) -> Config:
    """Workers run in their own folders: hand them absolute data, output and tracking paths."""
    db = sqlite_path(cfg.track.tracking_uri)
    uri = f"sqlite:///{db.absolute()}" if db is not None else cfg.track.tracking_uri
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=str(Path(cfg.data.path).absolute())),
        track=dataclasses.replace(cfg.track, output_dir=str(Path(cfg.track.output_dir).absolute()), tracking_uri=uri),
    )


RAY_DIR_MAX = 40  # Ray's unix sockets (108 bytes) add up to ~62 characters of session and socket names


def ray_temp_dir(output: Path) -> Path:
    """Ray's session folder for a local run: ``<output>/.ray`` when that path leaves Ray's socket
    paths under the limit, else a fresh folder under /tmp (a deep clone path would break Ray)."""
    inside = output.absolute() / ".ray"
    if len(str(inside)) <= RAY_DIR_MAX:
        return inside
    return Path(tempfile.mkdtemp(prefix="distmap-ray-", dir="/tmp" if Path("/tmp").is_dir() else None))


def _publish(folder: Path, metrics: dict[str, Any]) -> None:
    import ray.train

    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


def _print_once(message: str) -> None:
    """Ray Train routes a worker's ``print`` to its logger and, when something has wrapped
    ``sys.stdout``, also to the stream: each line showed twice. Writing to the process's own
    stdout reaches the driver once either way."""
    print(message, file=sys.__stdout__, flush=True)


def _quiet_ray_train_logs(rank: int) -> None:
    """Ray Train logs "Reporting training result ..." and "Checkpoint successfully created ..." on
    every rank at every validation; keep one line per checkpoint, from rank 0."""
    report = sys.modules.get("ray.train.v2._internal.execution.context")
    if report is not None:  # that module names its logger by file path
        logging.getLogger(report.__file__).setLevel(logging.WARNING)
    if rank:
        for name in ("ray.train.v2._internal.execution.storage", "ray.train._internal.storage"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; the process group is already initialised."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(config, "config sent to the Ray workers")
    torch.set_num_threads(cfg.train.threads or cfg.scale.cpus_per_worker)
    rank = ray.train.get_context().get_world_rank()
    _quiet_ray_train_logs(rank)
    device = ray.train.torch.get_device() if cfg.scale.use_gpu else torch.device("cpu")
    kg = KnowledgeGraph.load(cfg.data.path, train=not cfg.scale.shard_triples)  # else only this worker's rows
    checkpoint = ray.train.get_checkpoint()
    marker = Path(cfg.track.output_dir) / run_name(cfg) / "fault-injected"
    log: Callable[[str], None] = _print_once if rank == 0 else (lambda _: None)
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as restore:
        engine = ShardedEngine(cfg, kg, device, Path(restore) if restore else None, _publish, marker)
        run(engine, cfg, log, chief=rank == 0)


def _user_error(err: Exception) -> DistmapError | None:
    """The lowest rank's own user error (e.g. a leaky valid split refused by `run`), so the CLI
    prints its one line rather than Ray's report of every worker's traceback."""
    failures = getattr(err, "worker_failures", {})  # ray.train.WorkerGroupError: rank -> exception
    return next((e for _, e in sorted(failures.items()) if isinstance(e, DistmapError)), None)


def start_ray(address: str, output: Path, num_cpus: int, log: Callable[[str], None]) -> bool:
    """Connect to Ray unless connected: ``local`` starts a private one on 127.0.0.1 with ``num_cpus``
    and its session files under ``output``. True when this call started the connection (and
    should shut it down)."""
    local = address == "local"
    if local:
        set_loopback_env()
    import ray

    if ray.is_initialized():
        return False
    temp = ray_temp_dir(output) if local else None
    if temp is not None and not temp.is_relative_to(output.absolute()):
        log(f"Ray session files go to {temp}: {output.absolute()} is too deep for Ray's socket paths")
    command = os.environ.get(COMMAND_ENV)
    ray.init(
        address=address,
        runtime_env={"env_vars": {COMMAND_ENV: command}} if command else None,
        **(
            {"num_cpus": num_cpus, "_temp_dir": str(temp), "include_dashboard": True, "dashboard_host": "127.0.0.1"}
            if local
            else {}
        ),
    )
    # A cluster whose node address is loopback (a private local Ray, or a head started on
    # 127.0.0.1) keeps the rendezvous there too; a real cluster needs the stock config.
    node = ray.util.get_node_ip_address()
    if local and not node.startswith("127."):
        ray.shutdown()
        raise DistmapError(f"the local Ray bound to {node}, not 127.0.0.1")
    return True


def fit_distributed(cfg: Config, log: Callable[[str], None] = print, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train ``cfg`` on ``cfg.scale.workers`` Ray Train workers; returns the run's metrics summary.
    ``callbacks`` go to Ray Train (a study's trial passes Tune's ``TuneReportCallback``)."""
    cfg = absolute_paths(cfg)
    output = Path(cfg.track.output_dir)
    started = start_ray(cfg.scale.address, output, cfg.scale.workers * cfg.scale.cpus_per_worker, log)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    name = run_name(cfg)
    try:
        node = ray.util.get_node_ip_address()
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config=cfg.to_dict(),
            torch_config=LoopbackTorchConfig() if node.startswith("127.") else TorchConfig(),
            scaling_config=ScalingConfig(
                num_workers=cfg.scale.workers,
                use_gpu=cfg.scale.use_gpu,
                resources_per_worker={"CPU": cfg.scale.cpus_per_worker},
            ),
            run_config=RunConfig(
                name=name,
                storage_path=str(output / "ray_results"),
                failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=list(callbacks),
            ),
        )
        trainer.fit()
    except DistmapError:
        raise
    except Exception as err:  # Ray wraps worker errors; the message says which worker and why
        user_error = _user_error(err)
        if user_error is not None:
            raise user_error from None
        raise DistmapError(f"distributed run {name} failed: {err}") from err
    finally:
        if started:
            ray.shutdown()
    summary = json.loads((output / name / "metrics.json").read_text(encoding="utf-8"))
    log(f"{name}: test MRR {summary['test']['both']['mrr']:.4f} on {cfg.scale.workers} workers")
    return summary
