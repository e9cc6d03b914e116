"""``distmap ui``: the MLflow UI over the project's store, on 127.0.0.1 only.

The store's artifacts live beside it (``mlartifacts/``, see ``distmap.track``); the server is
told so, so run artifacts (curves, metrics.json, configs) open in the UI. The server replaces this
process (same PID): Ctrl+C (SIGINT to that PID) stops it and its workers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from distmap.errors import DistmapError


def server_command(store: Path, port: int) -> list[str]:
    store = store.absolute()
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{store}",
        "--default-artifact-root",
        (store.parent / "mlartifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def serve(store: str, port: int) -> None:
    path = Path(store)
    if not path.exists():
        raise DistmapError(f"{path}: no MLflow store here; train a run first (it creates ./mlflow.db)")
    command = server_command(path, port)
    print(f"MLflow UI on http://127.0.0.1:{port} over {path.absolute()} (Ctrl+C stops it)", flush=True)
    os.execve(command[0], command, {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
