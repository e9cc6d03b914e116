"""The results table: groups runs by (dataset, model), mean ± std over seeds, paper row beside."""

import json
import re
from pathlib import Path

import pytest

from distmap.cli import main
from distmap.errors import DataError
from distmap.report import load_runs, results_table
from distmap.track import source_commit


def run_summary(seed: int, mrr: float) -> dict:
    both = {"mrr": mrr, "hits@1": mrr - 0.1, "hits@3": mrr, "hits@10": mrr + 0.05, "mr": 3.0}
    return {
        "dataset": "wn9-img",
        "model": "complex",
        "modalities": ["structure"],
        "seed": seed,
        "best_epoch": 10 + seed,
        "train_seconds": 100.0,
        "test": {"both": both},
        "test_both_by_tie": {"pessimistic": {"mrr": mrr - 0.01}},
    }


def test_mean_std_over_seeds_beside_paper(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for seed, mrr in enumerate([0.90, 0.92, 0.94]):
        (tmp_path / f"run{seed}").mkdir()
        (tmp_path / f"run{seed}" / "metrics.json").write_text(json.dumps(run_summary(seed, mrr)))
    table = results_table(load_runs([tmp_path]))
    row = table.splitlines()[2]
    assert "| wn9-img | complex | structure | 3 | 0.920 ± 0.020 |" in row
    assert "0.908 / 0.903 / 0.907 / 0.928" in row
    assert "| 10, 11, 12 |" in row
    assert row.endswith("| —, —, — |")  # summaries written before runs recorded their commit
    assert main(["report", str(tmp_path)]) == 0
    assert "0.920 ± 0.020" in capsys.readouterr().out


def test_rows_name_each_seeds_commit(tmp_path: Path) -> None:
    """Every run records the checkout it ran from (``metrics.json`` ``commit``): the table names it per
    seed, so a row measured across commits says so."""
    commit = source_commit()
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit), commit  # the tests run in a git checkout
    runs = [{**run_summary(0, 0.9), "commit": "a" * 40}, {**run_summary(1, 0.9), "commit": "b" * 40 + "+dirty"}]
    assert results_table(runs).splitlines()[2].endswith("| aaaaaaa, bbbbbbb+dirty |")


def test_bad_summaries_are_named(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match=r"metrics\.json: cannot read"):
        load_runs([tmp_path])
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(DataError, match="missing dataset"):
        load_runs([tmp_path])
