"""`distmap report --store`: every figure the store has data for is written (non-empty PNG) with
its table in report.md; the MLflow UI command binds to 127.0.0.1 over the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distmap.cli import main
from distmap.config import TrackConfig
from distmap.track import Tracker, mlflow_client
from distmap.ui import server_command

FIGURES = (
    "training_diag.png",
    "training_params.png",
    "params_params.png",
    "fig1_wdistance.png",
    "fig2a_spread.png",
    "align_cost.png",
)


def log_run(store: str, experiment: str, name: str, params: dict, history: dict, final: dict, tags: dict) -> None:
    tracker = Tracker(TrackConfig(tracking_uri=store, experiment=experiment))
    tracker.start(name, {"data.path": "/data/wn9-img", "data.modalities": "['text']", **params})
    for step, record in history.items():
        tracker.log_metrics(record, step=step)
    tracker.log_metrics(final)
    tracker.set_tags(tags)
    tracker.finish()


@pytest.fixture
def tiny_store(tmp_path: Path) -> str:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    probe = {"track.probe_entities": "['n1', 'n2', 'n3']"}
    for label, grow in (("MAP", 0.0), ("MAP w/o R", 1.0)):
        history = {e: {"loss": 5 - e, "probe/spread": 3 + grow * e} for e in (1, 2, 3, 4)}
        history[4]["valid/both/mrr"] = 0.8
        final = {"test/both/mrr": 0.85, "wdist/text": 2.0 + grow}
        log_run(store, "diag", label, {"model.label": label, **probe}, history, final, {})
    for value, mrr in ((0.1, 0.80), (0.01, 0.78), (1.0, 0.75)):
        trial = {} if value == 0.1 else {"align.lambda_align": value}
        tags = {"distmap.study": "params", "distmap.trial_params": json.dumps(trial)}
        history = {1: {"loss": 4.0}, 2: {"loss": 3.0, "valid/both/mrr": mrr}}
        final = {"test/both/mrr": mrr, "valid/both/mrr": mrr}
        log_run(
            store,
            "params",
            f"params-{value}",
            {"model.label": "MAP", "align.lambda_align": value},
            history,
            final,
            tags,
        )
    tracker = Tracker(TrackConfig(tracking_uri=store, experiment="benchmarks"))
    tracker.start("align-cost", {"threads": 1})
    for n, full in ((1000, "full_ot/epoch_s"), (10000, "full_ot/epoch_s"), (100000, "full_ot/epoch_s_extrapolated")):
        step = full.replace("epoch", "step")
        minibatch = {"map/step_s": 0.04, "map/epoch_s": n / 1e4, "map_ot/step_s": 0.03, "map_ot/epoch_s": n / 2e4}
        tracker.log_metrics({**minibatch, step: n**2 / 1e7, full: n**2 / 1e6}, step=n)
    tracker.finish()
    return store


def test_report_writes_every_figure_and_table(tiny_store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = tmp_path / "names.tsv"
    names.write_text("entity\tlemmas\nn1\tapple,malus\nn2\tpeach\n", encoding="utf-8")
    out = tmp_path / "figures"
    assert main(["report", "--store", tiny_store, "--out", str(out), "--names", str(names)]) == 0
    for figure in FIGURES:
        assert (out / figure).stat().st_size > 10_000, figure
    report = (out / "report.md").read_text()
    for figure in FIGURES:
        assert f"![]({figure})" in report
    assert "apple (n1), peach (n2), n3" in report
    assert "| align.lambda_align | 0.1 (base) | 0.8000 | 0.8000 |" in report
    assert "| MAP w/o R | text | 3.0000 |" in report
    assert "| 100,000 |" in report
    assert "×" in report
    assert "*" in report.split("| 100,000 |")[1].splitlines()[0]  # extrapolated rows are marked
    assert "figures and tables ->" in capsys.readouterr().out


def test_ui_binds_to_loopback_over_the_store(tmp_path: Path) -> None:
    command = server_command(tmp_path / "mlflow.db", 5123)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert command[command.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()
    assert main(["ui", "--store", str(tmp_path / "missing.db")]) == 2


def test_figures_take_the_newest_measurement_across_experiments(tmp_path: Path) -> None:
    """Fig. 1 shows each label's most recent ``distmap wdist`` measurement, Fig. 2a each label's newest
    probed run, whatever experiments they sit in (a store holds old diagnostics beside new results)."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    probe = {"model.label": "MAP", "track.probe_entities": "['n1', 'n2']"}
    log_run(store, "zz-results", "early", {"model.label": "MAP"}, {1: {"loss": 1.0}}, {"test/both/mrr": 0.9}, {})
    old_spread = {e: {"loss": 1.0, "probe/spread": 10.0 + e} for e in (1, 2)}
    log_run(store, "aa-old", "old", probe, old_spread, {"test/both/mrr": 0.8, "wdist/text": 2.0}, {})
    new_spread = {e: {"loss": 1.0, "probe/spread": 20.0 + e} for e in (1, 2)}
    log_run(store, "zz-results", "probe", probe, new_spread, {"test/both/mrr": 0.9}, {})
    client = mlflow_client(store)
    (early,) = client.search_runs(
        [client.get_experiment_by_name("zz-results").experiment_id], filter_string="attributes.run_name = 'early'"
    )
    client.log_metric(early.info.run_id, "wdist/text", 7.0)  # measured after the old run's 2.0
    out = tmp_path / "figures"
    assert main(["report", "--store", store, "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| MAP | text | 7.0000 |" in report
    assert "| 2 | 22.0000 |" in report
