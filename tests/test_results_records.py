"""RESULTS.md quotes benchmark records (``benchmarks/record.py``): every quoted table and figure must
equal the record it names, so a reader can re-derive what the page says from the file beside it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- record: (\S+?) -->\n(.*?)<!-- /record -->", re.S)
FIGURE = re.compile(r"\[([^\]]+)\]\((benchmarks/results/[^)#\s]+\.json)#([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
NUMBER = re.compile(r"[-+−]?\d[\d,]*(?:\.(\d+))?")


def load_record_module():
    spec = importlib.util.spec_from_file_location("record", REPO / "benchmarks" / "record.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("record", module)
    spec.loader.exec_module(module)
    return module


def lookup(values: object, path: str) -> object:
    """``values`` at the dotted ``path`` (a number in the path indexes a list)."""
    for part in path.split("."):
        values = values[int(part)] if isinstance(values, list) else values[part]
    return values


def shown_equals(text: str, value: float) -> bool:
    """Whether ``text`` (e.g. "1.36×", "−0.03", "95 %", "3,112") shows ``value`` rounded as printed."""
    match = NUMBER.search(text)
    assert match, f"no number in the figure {text!r}"
    shown = float(match.group(0).replace(",", "").replace("−", "-"))
    decimals = len(match.group(1) or "")
    if "%" in text:
        value = 100 * value
    return abs(round(value, decimals) - shown) <= 0.5 * 10**-decimals + 1e-12


def quotes() -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    text = (REPO / "RESULTS.md").read_text(encoding="utf-8")
    tables = [(path, body) for path, body in BLOCK.findall(text)]
    figures = FIGURE.findall(CODE_SPAN.sub("", text))  # a quote shown as an example in `code` is not one
    return tables, figures


def read(path: str) -> dict:
    file = REPO / path
    assert file.is_file(), f"RESULTS.md quotes {path}, which does not exist"
    return json.loads(file.read_text(encoding="utf-8"))


def test_results_quotes_records() -> None:
    tables, figures = quotes()
    assert tables, "RESULTS.md quotes no benchmark record"
    for path, body in tables:
        quoted = "\n".join(line.rstrip() for line in body.splitlines() if line.startswith("|"))
        assert quoted, f"the record block of {path} in RESULTS.md holds no table"
        assert quoted in read(path)["tables"], f"a table quoted from {path} differs from every table it printed"
    for text, path, key in figures:
        value = lookup(read(path), key)
        assert shown_equals(text, value), f"RESULTS.md shows {text!r} for {path}#{key}, the record holds {value}"


def test_record_written_with_tables_and_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record_module = load_record_module()
    monkeypatch.setattr(sys, "argv", ["benchmarks/fake.py", "--n", "3"])
    with record_module.recorded("fake", {"n": 3, "where": tmp_path}, folder=tmp_path) as record:
        print("header line\n\n| a | b |\n|---|---|\n| x | 1.50 |\ntext between\n| c |\n|---|")
        record.values["x"] = {"b": 1.4987}
    (written,) = tmp_path.glob("fake-*.json")
    body = json.loads(written.read_text(encoding="utf-8"))
    assert body["tables"] == ["| a | b |\n|---|---|\n| x | 1.50 |", "| c |\n|---|"]
    assert body["command"] == "python benchmarks/fake.py --n 3"
    assert body["args"] == {"n": 3, "where": str(tmp_path)}
    assert body["values"] == {"x": {"b": 1.4987}}
    assert len(body["host"]["load_before"]) == 3
    assert len(body["host"]["load_after"]) == 3
    assert {"torch", "python"} <= set(body["versions"])
    assert body["commit"]
    assert shown_equals("1.50", lookup(body["values"], "x.b"))
    assert not shown_equals("1.51", 1.4987)


def test_record_written_on_missed_target_exit_not_on_failure(tmp_path: Path) -> None:
    record_module = load_record_module()

    def missed_target() -> None:
        with record_module.recorded("exits", {}, folder=tmp_path):
            print("| t |\n|---|")
            raise SystemExit(1)

    with pytest.raises(SystemExit):
        missed_target()
    (written,) = tmp_path.glob("exits-*.json")
    assert json.loads(written.read_text(encoding="utf-8"))["exit_code"] == 1
    with pytest.raises(RuntimeError), record_module.recorded("fails", {}, folder=tmp_path):
        raise RuntimeError("half-run")
    assert not list(tmp_path.glob("fails-*.json"))


def test_figure_rounding() -> None:
    assert shown_equals("1.36×", 1.3649)
    assert not shown_equals("1.36×", 1.3651)
    assert shown_equals("95 %", 0.951)
    assert shown_equals("3,112", 3111.6)
    assert shown_equals("−0.03", -0.0312)
