"""report.md formatting (escaped cells, no "None") and optimize's report.html hook, on the saved optimize report.

bench/optimize-report.json is a real optimize report.json (its stage notes hold "max |diff|"); the test
edits copies of it, so it runs in well under a second without a model.
"""

import copy
import json
import re
from pathlib import Path

import pytest

from edgekit import report as rep

SAVED = Path(__file__).resolve().parents[2] / "bench" / "optimize-report.json"
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


@pytest.fixture
def saved() -> dict:
    return json.loads(SAVED.read_text())


def _tables(md: str) -> list[list[str]]:
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _assert_tables_well_formed(md: str) -> None:
    tables = _tables(md)
    assert tables
    for table in tables:
        widths = {len(UNESCAPED_PIPE.findall(line)) for line in table}
        assert len(widths) == 1, table  # every row has as many cells as the header


def test_md_cell_escapes_specials():
    assert rep.md_cell("max |diff| 2e-06") == "max \\|diff\\| 2e-06"
    assert rep.md_cell("a_b *c* `d` <e>") == "a\\_b \\*c\\* \\`d\\` \\<e\\>"
    assert rep.md_cell("two\nlines") == "two lines"
    assert rep.md_cell(None) == "—" and rep.md_cell(None, "") == ""


def test_optimize_markdown_tables_hold_and_no_none(saved):
    saved["stages"].append({"name": "odd|stage", "seconds": None, "notes": "a | b\nc"})
    saved["bench"]["threads"] = None
    saved["environment"]["threads"] = {"intra_op": None, "torch": None, "env": {}}
    md = rep.optimize_markdown(saved)
    assert "max \\|diff\\|" in md and "odd\\|stage" in md
    _assert_tables_well_formed(md)
    assert "None" not in md
    cores = saved["environment"]["cpu"]["usable_cores"]
    assert f"default ({cores} cores) threads" in md and f"intra-op default ({cores} cores)" in md


def test_combined_report_markdown_well_formed(saved, tmp_path):
    from edgekit.report_runs import load_runs

    saved["baseline"]["backend"] = "pytorch|fp32"  # a cell with a pipe in the combined table
    (tmp_path / "report.json").write_text(json.dumps(saved))
    md = rep.report_markdown(rep.build_report(load_runs([tmp_path])))
    _assert_tables_well_formed(md)
    assert "pytorch\\|fp32" in md and "None" not in md


def test_names_outside_tables_are_escaped(saved, tmp_path):
    """A folder named with a backtick ended the inline-code span around it early; a title or warning with * or _
    turned into emphasis."""
    assert rep.md_code("out/a") == "`out/a`" and rep.md_code("we`ird") == "`` we`ird ``"
    assert rep.md_code("a ``b`` c") == "``` a ``b`` c ```"
    saved["model"] = "models/my`model"
    saved["optimized"]["path"] = "out/*fast*_v2"
    md = rep.optimize_markdown(saved)
    assert "- Model: `` models/my`model ``" in md and "artifact: `out/*fast*_v2`" in md
    run = tmp_path / "run_*1*"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(saved))
    from edgekit.report_runs import load_runs

    built = rep.build_report(load_runs([run]))
    built["title"] = "Release *candidate* `2`"
    built["warnings"].append("noisy run_*1*")
    md = rep.report_markdown(built)
    assert md.startswith("# Release \\*candidate\\* \\`2\\`\n") and "- **WARNING** noisy run\\_\\*1\\*" in md


def test_write_html_for_run(saved, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="matplotlib (edgekit[report]) draws the plots")
    (tmp_path / "report.json").write_text(json.dumps(saved))
    note = rep.write_html_for_run(tmp_path, source="out/run")
    html = (tmp_path / "report.html").read_text()
    assert note == "report.html: out/run/report.html"
    assert html.count("data:image/png;base64,") == 3 and "out/run" in html and "None" not in html


def test_write_html_for_run_without_matplotlib(saved, tmp_path, monkeypatch):
    import edgekit.deps

    real = edgekit.deps.available
    monkeypatch.setattr(edgekit.deps, "available", lambda m: False if m == "matplotlib" else real(m))
    (tmp_path / "report.json").write_text(json.dumps(copy.deepcopy(saved)))
    note = rep.write_html_for_run(tmp_path)
    assert "pip install 'edgekit[report]'" in note and "\n" not in note
    assert not (tmp_path / "report.html").exists()


_BENCH = {"schema": "edgekit.bench/1", "kind": "bench", "artifact": "out/int8", "backend": "onnxruntime",
          "mode": "model-only", "batch_size": 1, "seq_len": None, "latency_ms": {"p50": 2.5, "p90": 2.9},
          "cv": 0.05, "noisy": False, "throughput_per_s": 400.0, "samples_ms": [2.4, 2.5, 2.6], "warnings": [],
          "environment": {}}


@pytest.mark.parametrize("field,value,message", [
    ("latency_ms", "fast", "malformed latency_ms"), ("latency_ms", {}, "an object with p50"),
    ("latency_ms", None, "an object with p50"), ("samples_ms", ["a", "b"], "malformed samples_ms"),
    ("throughput_per_s", "x", "malformed throughput_per_s"), ("batch_size", "one", "malformed batch_size"),
    ("environment", [1], "malformed environment"), ("artifact", 5, "is malformed"),
    ("environment", {"cpu": []}, "malformed environment.cpu"), ("environment", {"gpus": "none"}, "environment.gpus"),
    ("environment", {"threads": "4"}, "environment.threads"), ("environment", {"versions": [1]}, "environment.versi"),
    ("environment", {"threads": {"intra_op": "4"}}, "environment.threads.intra_op"),
])
def test_a_result_with_a_field_of_the_wrong_shape_is_one_line(tmp_path, field, value, message):
    """Each was a traceback (TypeError, ValueError: Unknown format code, AttributeError) or, for latency_ms {}
    and null, a report of nothing with exit 0."""
    from edgekit.errors import InputError
    from edgekit.report_runs import load_runs

    good = tmp_path / "good.json"
    good.write_text(json.dumps(_BENCH))
    assert load_runs([good])[0]["rows"][0]["latency_ms"]["p50"] == 2.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**_BENCH, field: value}))
    with pytest.raises(InputError, match=message) as err:
        load_runs([bad])
    assert "\n" not in str(err.value)


def test_the_committed_peers_results_make_a_report(tmp_path):
    """run_peers.py writes edgekit.peers/2, which report refused as 'not an edgekit result'."""
    from edgekit.report_runs import load_runs

    peers = SAVED.parent / "peers" / "results.json"
    run = load_runs([peers])[0]
    measured = [r for r in run["rows"] if r["status"] == "ok"]
    assert run["kind"] == "peers" and {r["batch_size"] for r in measured} == {1, 8}
    assert all(r["latency_ms"]["p50"] > 0 for r in measured) and any(r["status"] == "failed" for r in run["rows"])
    rep.report([peers], tmp_path / "out")
    assert "edgekit optimize default int8" in (tmp_path / "out" / "report.md").read_text()


def test_a_report_does_not_replace_another_kind_of_edgekit_folder(tmp_path):
    """report --out on an optimized model folder deleted the model (it has a manifest, so no --force was asked)."""
    from edgekit.errors import InputError

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"onnx")
    (model / "manifest.json").write_text(json.dumps({"edgekit_artifact": "onnx", "step": "optimize"}))
    with pytest.raises(InputError, match="holds an edgekit onnx artifact"):
        rep.report([SAVED], model)
    assert (model / "model.onnx").read_bytes() == b"onnx"
    rep.report([SAVED], tmp_path / "again")
    rep.report([SAVED], tmp_path / "again")  # a report over a report: a rerun


def test_speedup_only_between_runs_of_one_shape_and_thread_counts_that_differ_are_flagged(tmp_path):
    """A batch-8 row against a batch-1 reference read as a 0.16x "speedup" (its items/s were 1.3x higher); runs
    at 1 and 2 threads were compared without a word."""
    from edgekit.report_runs import load_runs

    one = tmp_path / "b1.json"
    one.write_text(json.dumps({**_BENCH, "environment": {"threads": {"intra_op": 1}}}))
    eight = tmp_path / "b8.json"
    eight.write_text(json.dumps({**_BENCH, "artifact": "out/int8-b8", "batch_size": 8,
                                 "latency_ms": {"p50": 15.0}, "throughput_per_s": 530.0,
                                 "environment": {"threads": {"intra_op": 2}}}))
    combined = rep.build_report(load_runs([one, eight]))
    assert [r["speedup_p50"] for r in combined["rows"]] == [1.0, None]
    assert combined["table"][1][-1] == "— (another batch or length)"
    assert any("different thread counts (b1.json: 1, b8.json: 2)" in w for w in combined["warnings"])


def test_optimize_markdown_says_how_its_speedup_was_measured(saved):
    """"Speedup (p50): 7.79x" stood beside a table whose p50s gave 7.12x, and "30 timed runs" beside 89."""
    saved.update(speedup_p50=7.79, speedup_p50_separate=7.12,
                 speedup={"method": "interleaved", "ratio": 7.79, "iqr": [7.5, 8.0], "rounds": 20, "unstable": False})
    saved["bench"]["min_seconds"] = 3.0
    md = rep.optimize_markdown(saved)
    assert "7.79x, interleaved: the median of 20 rounds' ratios (IQR 7.50-8.00)" in md
    assert "the table's separate runs give 7.12x" in md
    assert f"at least {saved['bench']['iterations']} timed runs and 3 s for each model" in md
