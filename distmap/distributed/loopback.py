"""Keep a local Ray run, and the torch process group it sets up, on 127.0.0.1.

Ray on Linux swaps 127.0.0.1 for the machine's outward address, and torch's TCPStore
rendezvous server always listens on the wildcard address. Measured on Ray 2.60 (see
docs/distributed.md): ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` puts every Ray listener on
127.0.0.1 (it also refuses a second ``ray start`` node; ``ray.cluster_utils.Cluster`` still
works), ``GLOO_SOCKET_IFNAME=lo`` keeps gloo on loopback, and ``LoopbackTorchConfig`` hands
TCPStore a socket already bound to the node address. It relies on Ray's private
``_TorchBackend``; on a real cluster the stock ``TorchConfig`` is used instead.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

from distmap.distributed.collectives import free_port

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}

_KEEP: dict[str, Any] = {}  # rank 0's listening socket and store must outlive the setup call


def set_loopback_env() -> None:
    """Before Ray starts: the processes it launches inherit these variables.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is imported, into
    ``ray_constants.ENABLE_RAY_CLUSTER``; the driver (already importing ray) picks its node
    address from that constant, so it is set to match.
    """
    os.environ.update(LOOPBACK_ENV)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def _init_process_group(backend: str, address: str, port: int, rank: int, world_size: int, timeout_s: int) -> None:
    timeout = timedelta(seconds=timeout_s)
    if rank == 0:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(128)
        store = dist.TCPStore(
            address, port, world_size, True, timeout, wait_for_workers=False, master_listen_fd=listener.fileno()
        )
        _KEEP["listener"] = listener
    else:
        store = dist.TCPStore(address, port, world_size, False, timeout)
    _KEEP["store"] = store
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        worker_group.execute(_set_torch_distributed_env_vars)
        address = worker_group.execute_single(0, ray.util.get_node_ip_address)
        port = worker_group.execute_single(0, free_port, address)
        size = len(worker_group)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _init_process_group,
                    backend_config.backend or "gloo",
                    address,
                    port,
                    rank,
                    size,
                    backend_config.timeout_s,
                )
                for rank in range(size)
            ]
        )


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous listens on the node address only."""

    @property
    def backend_cls(self) -> type:
        return _LoopbackTorchBackend
