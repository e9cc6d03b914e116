"""Fig. 1: how far each modality's projected rows lie from the structural rows after training.

The measure is the exact-LP 2-Wasserstein distance with uniform weights (POT ``ot.emd2``) between a
modality's projected rows and the structural rows of the entities that have that modality, from the
run's best-on-valid checkpoint. No alignment leaves the two clouds apart; an alignment that works
pulls them together. W2 is in embedding units, so models whose rows differ in scale are also
compared by W2 over the RMS norm of the structural rows (``wdist_rel/<modality>``). Over all 6,555
WN9-IMG entities one LP takes about 30 s on one core. The values are added to the run's MLflow
record (``wdist/<modality>``), where ``distmap report`` finds them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from distmap.align.ot import wasserstein_exact
from distmap.config import load_config
from distmap.data.kg import KnowledgeGraph
from distmap.errors import DistmapError
from distmap.restore import load_best_model
from distmap.track import find_run, mlflow_client
from distmap.train.fit import run_name

METRIC = "wdist/{}"
RELATIVE = "wdist_rel/{}"


@dataclass(frozen=True)
class RunDistances:
    run: str
    label: str
    epoch: int
    distances: dict[str, float]  # modality -> W2(projected, structure)
    relative: dict[str, float]  # modality -> W2 / RMS norm of the structural rows (comparable across models)
    entities: dict[str, int]  # modality -> entities that have it
    mlflow_run_id: str | None


def modality_distances(run_dir: Path) -> RunDistances:
    """W2 between each modality's projected rows and the structural rows (present rows only)."""
    cfg = load_config(run_dir / "config.yaml")
    if not cfg.data.modalities:
        raise DistmapError(f"{run_dir}: a structure-only run has no modality to measure")
    kg = KnowledgeGraph.load(cfg.data.path)
    model, epoch = load_best_model(run_dir, cfg, kg, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        views = model.views()
    distances, relative, counts = {}, {}, {}
    for m in cfg.data.modalities:
        present = views.present[m]
        structure = views.structure[present]
        distances[m] = wasserstein_exact(views.projected[m][present], structure)
        relative[m] = distances[m] / float(structure.detach().double().pow(2).sum(1).mean().sqrt())
        counts[m] = int(present.sum())
    track = dataclasses.replace(cfg.track, run_name=run_name(cfg))
    run = find_run(track) if cfg.track.enabled else None
    if run is not None:
        client = mlflow_client(track.tracking_uri)
        for m, value in distances.items():
            client.log_metric(run.info.run_id, METRIC.format(m), value)
            client.log_metric(run.info.run_id, RELATIVE.format(m), relative[m])
    return RunDistances(
        run_name(cfg), cfg.model.display_name, epoch, distances, relative, counts, run.info.run_id if run else None
    )
