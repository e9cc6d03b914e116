"""Ray Train on a private local Ray (127.0.0.1): 2 workers over row shards give the plain loop's
metrics, also when one worker is killed mid-run and Ray restarts the group from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from distmap.cli import main
from distmap.config import Config, config_from_dict
from distmap.data.prepare import prepare_dataset
from distmap.distributed.trainer import RAY_DIR_MAX, fit_distributed, ray_temp_dir
from distmap.errors import DistmapError
from distmap.train.fit import fit
from tests.conftest import ring_graph, write_triples
from tests.test_dist import flat


def make_config(dataset: Path, out: Path, **scale: object) -> Config:
    return config_from_dict(
        {
            "data": {"path": str(dataset)},
            "model": {"name": "complex", "rank": 8, "init_scale": 0.1},
            "train": {"epochs": 6, "batch_size": 40, "lr": 0.1, "reg_weight": 1e-3, "valid_every": 2},
            "track": {
                "tracking_uri": f"sqlite:///{out}/mlflow.db",
                "output_dir": str(out / "runs"),
                "experiment": "ray",
                "run_name": "ray" if scale else "plain",
            },
            "scale": scale,
        }
    )


def test_two_ray_workers_match_the_plain_loop_through_a_crash(
    ring_dataset: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    plain = fit(make_config(ring_dataset, short_dir), log=lambda _: None)
    cfg = make_config(ring_dataset, short_dir, workers=2, max_failures=1, fail_at_step=14)
    summary = fit_distributed(cfg, log=lambda _: None)
    assert (short_dir / "runs" / "ray" / "fault-injected").exists(), "the injected failure did not happen"
    assert flat(summary["test"]) == pytest.approx(flat(plain.test.metrics), abs=1e-4)
    assert summary["epochs_run"] == 6

    # `distmap evaluate` reassembles the best rows from the sharded Ray checkpoint in one process.
    capsys.readouterr()
    assert main(["evaluate", str(short_dir / "runs" / "ray")]) == 0
    both = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("both"))
    assert float(both.split()[1]) == pytest.approx(summary["test"]["both"]["mrr"], abs=1e-4)

    client = mlflow.MlflowClient(tracking_uri=cfg.track.tracking_uri)
    found = client.search_runs([client.get_experiment_by_name("ray").experiment_id])
    # An attempt killed before its first checkpoint registered may leave a FAILED run beside it.
    (finished,) = [r for r in found if r.info.run_name == "ray" and r.info.status == "FINISHED"]
    assert finished.data.params["scale.workers"] == "2"
    assert finished.data.metrics["test/both/mrr"] == pytest.approx(summary["test"]["both"]["mrr"])


def test_ray_session_folder_moves_to_tmp_when_the_output_path_is_too_deep(short_dir: Path) -> None:
    assert ray_temp_dir(short_dir) == short_dir / ".ray"
    deep = short_dir / ("d" * RAY_DIR_MAX)
    moved = ray_temp_dir(deep)
    assert moved.is_dir()
    assert moved.parent == Path("/tmp")
    assert moved.name.startswith("distmap-ray-")
    moved.rmdir()


def test_a_leaky_valid_split_is_refused_by_the_ray_workers_in_one_line(short_dir: Path) -> None:
    splits = ring_graph()
    splits["valid"] += splits["train"][:3]  # 3 of 12 valid lines leak
    prepare_dataset(write_triples(short_dir / "raw", splits), short_dir / "leaky", log=lambda _: None)
    cfg = make_config(short_dir / "leaky", short_dir, workers=2)
    with pytest.raises(DistmapError, match=r"25\.0% of valid lines .*train\.allow_leaky_valid") as caught:
        fit_distributed(cfg, log=lambda _: None)
    assert "\n" not in str(caught.value)
