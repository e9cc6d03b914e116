"""Config loading: typed, validated, and errors that name the key and the file."""

from pathlib import Path

import pytest

from distmap.config import load_config
from distmap.errors import ConfigError
from distmap.tune.study import load_study

GOOD = """
data:
  path: datasets/x
model:
  name: complex
  rank: 32
train:
  lr: 1
  epochs: 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_loads_and_fills_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.model.rank == 32
    assert cfg.train.lr == 1.0
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 1000
    assert cfg.track.tracking_uri.startswith("sqlite:///")
    assert cfg.flat()["model.name"] == "complex"


def test_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), ["train.lr=0.05", "model.name=rotate", "track.enabled=false"])
    assert cfg.train.lr == 0.05
    assert cfg.model.name == "rotate"
    assert cfg.track.enabled is False


@pytest.mark.parametrize(
    ("text", "overrides", "key", "problem"),
    [
        (GOOD + "  lrr: 0.1\n", [], "train.lrr", "unknown key"),
        (GOOD + "extra: 1\n", [], "extra", "unknown key"),
        (GOOD, ["train.lr=fast"], "train.lr", "expected float"),
        (GOOD, ["train.epochs=2.5"], "train.epochs", "expected int"),
        (GOOD, ["model.name=transh"], "model.name", "is not one of"),
        (GOOD, ["train.lr=-1"], "train.lr", "must be > 0"),
        (GOOD, ["train.valid_every=0"], "train.valid_every", "must be > 0"),
        (GOOD, ["train.batch_size=true"], "train.batch_size", "expected int"),
        ("model:\n  name: complex\n", [], "data", "required key is missing"),
        (GOOD, ["train.lr"], "train.lr", "expected key=value"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, overrides: list[str], key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    message = str(err.value)
    # A bad value from the command line names the --set argument; one from the file names the file.
    assert message.startswith(f"--set {overrides[-1]}" if overrides else str(path))
    assert key in message
    assert problem in message


def test_a_typo_on_the_command_line_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD), ["train.epoch=3"])
    assert str(err.value).startswith("--set train.epoch=3: train.epoch: unknown key")
    assert str(tmp_path) not in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed"))


def test_shipped_configs_load() -> None:
    configs = sorted(p for p in Path(__file__).parents[1].glob("configs/*/*.yaml") if p.parent.name != "tune")
    assert len(configs) >= 8
    for path in configs:
        load_config(path)
    studies = sorted(Path(__file__).parents[1].glob("configs/tune/*.yaml"))
    assert studies
    for path in studies:
        load_study(path)  # studies and every value they search, checked against their training configs
