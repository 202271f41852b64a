"""bench/peers/run_peers.py end to end on the tiny model, Optimum left out (its venv is not part of CI; ~30 s)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEASURED = ("PyTorch eager fp32", "PyTorch dynamic int8 (torch.ao quantize_dynamic)", "edgekit export (fp32 ONNX)",
            "edgekit optimize default int8 (fused)")


def test_peers_script_writes_results_with_interleaved_ratios(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "peers"
    cmd = [sys.executable, str(ROOT / "bench" / "peers" / "run_peers.py"), "--model", str(tiny_model),
           "--data", str(tiny_data), "--skip-optimum", "--max-samples", "20", "--rounds", "4", "--runs", "2",
           "--warmup", "1", "--samples", "8", "--threads", "1", "--throughput-rounds", "4", "--throughput-runs", "1",
           "--throughput-seq", "16", "--no-fast", "--out", str(out), "--work", str(tmp_path / "work")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "edgekit.peers/2" and results["accuracy_rows"] == 20 and results["threads"] == 1
    by_name = {r["name"]: r for r in results["rows"]}
    for name in MEASURED:
        assert by_name[name]["status"] == "ok" and 0 <= by_name[name]["accuracy"] <= 1
    assert all(r["status"] == "skipped" for r in results["rows"] if r["group"] == "optimum")
    for table in ("batch1", "throughput"):  # every measured peer timed in the same interleaved rounds
        timed = results[table]["ratios"]["rows"]
        eager = timed["PyTorch eager fp32"]["vs_pytorch"]
        assert eager["ratio"] == 1.0 and eager["iqr"] == [1.0, 1.0]
        for name in MEASURED:
            t, r = timed[name], timed[name]["vs_pytorch"]
            assert t["runs"] >= 4 and t["p50_ms"] > 0 and t["vs_optimum"] is None
            assert r["iqr"][0] <= r["ratio"] <= r["iqr"][1]
    md = (out / "results.md").read_text()
    assert "| PyTorch eager fp32 |" in md and "1.00x" in md and "run_peers.py --model" in md
