"""``optimize`` and ``optimize --search`` write report.json with the same top-level fields; one reader loads both."""

import json
import subprocess
import sys

from conftest import requires_toolchain
from edgekit.report_schema import ROW_FIELDS, TOP_LEVEL, read_report

pytestmark = requires_toolchain


def test_plain_and_search_reports_share_the_schema(tiny_optimized, tiny_model, tiny_data, tmp_path):
    out = tmp_path / "searched"
    cmd = [sys.executable, "-m", "edgekit", "optimize", str(tiny_model), "--data", str(tiny_data), "--out", str(out),
           "--search", "--mode", "dynamic", "--per-channel", "--threads", "1", "--max-accuracy-drop", "0.5",
           "--no-cache", "--quiet", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    plain, searched = read_report(tiny_optimized), read_report(out)
    assert json.loads(result.stdout) == searched  # --json prints the file's report
    assert (plain["kind"], searched["kind"]) == ("optimize", "search")
    assert set(TOP_LEVEL) <= set(plain) and set(TOP_LEVEL) <= set(searched)
    assert set(searched) - set(plain) == {"search"}
    for report in (plain, searched):
        assert report["passed"] is True and report["speedup_p50"] > 0
        assert set(ROW_FIELDS) <= set(report["baseline"]) and set(ROW_FIELDS) <= set(report["optimized"])
        assert report["baseline"]["latency_ms"]["p50"] > 0 and report["optimized"]["latency_ms"]["p50"] > 0
        assert report["accuracy_drop"] <= report["max_accuracy_drop"] + 1e-12  # as the gate counts
    assert searched["search"]["winner"]["id"] == searched["optimized"]["id"]
    ids = [t["id"] for t in searched["search"]["trials"]]
    assert ids[:2] == ["fp32", "int8-dynamic-pc"] and searched["optimized"]["id"] in ids
