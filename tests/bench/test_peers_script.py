"""bench/peers/run_peers.py end to end on the tiny model, Optimum left out (its venv is not part of CI; ~30 s)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_peers_script_writes_results_with_ratios(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "peers"
    cmd = [sys.executable, str(ROOT / "bench" / "peers" / "run_peers.py"), "--model", str(tiny_model),
           "--data", str(tiny_data), "--skip-optimum", "--max-samples", "20", "--iterations", "5",
           "--min-seconds", "0", "--warmup", "1", "--warmup-seconds", "0", "--samples", "8", "--threads", "1",
           "--out", str(out), "--work", str(tmp_path / "work")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "edgekit.peers/1" and results["accuracy_rows"] == 20 and results["threads"] == 1
    by_name = {r["name"]: r for r in results["rows"]}
    eager = by_name["PyTorch eager fp32"]
    assert eager["status"] == "ok" and eager["speedup_vs_pytorch"] == 1.0 and eager["speedup_vs_optimum"] is None
    for name in ("PyTorch dynamic int8 (torch.ao quantize_dynamic)", "edgekit export (fp32 ONNX)",
                 "edgekit quantize --target cpu (fusion + dynamic int8)"):
        row = by_name[name]
        assert row["status"] == "ok" and 0 <= row["accuracy"] <= 1 and row["iterations"] == 5
        assert row["speedup_vs_pytorch"] == eager["latency_ms"]["p50"] / row["latency_ms"]["p50"]
    assert all(r["status"] == "skipped" for r in results["rows"] if r["group"] == "optimum")
    md = (out / "results.md").read_text()
    assert "| PyTorch eager fp32 |" in md and "1.00x" in md and "run_peers.py --model" in md
    assert "skipped: `--skip-optimum`" in md
