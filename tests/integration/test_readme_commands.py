"""The README's commands, run as a new user runs them (the real CLI in a subprocess, from the project root).

- The main job, taken from the README's "Main job" line verbatim (``edgekit optimize --recipe ...``), with
  ``--out`` in a temporary folder and a lean bench (``--iterations 20``); the gate checks every dev row, as the
  README's command does (on 200 rows one flipped sentence is 0.5 pt and the 1-pt budget sat at its edge).
- ``optimize --target tensorrt-rtx``: int8 with per-layer fallback, engines for two compute capabilities,
  calibrated on SST-2 train (TensorRT-RTX builds without a GPU; latency is then "not measured").

Both need ../shared (skipped with the reason without it) and run in CI; a few minutes each on 2 cores.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, read_json, requires_shared, requires_toolchain
from edgekit.deps import available

pytestmark = [requires_shared, requires_toolchain, pytest.mark.shared,
              pytest.mark.skipif(not (ROOT.parent / "shared" / "models").is_dir(),
                                 reason="the recipe reads ../shared beside the project; not found there")]
LEAN_BENCH = ["--iterations", "20", "--warmup", "5"]
LEAN = ["--max-samples", "200", *LEAN_BENCH]
DEV_ROWS = 872  # ../shared/data/sst2/dev.tsv


def readme_main_command() -> list[str]:
    """The ``edgekit optimize`` at the end of the README's main-job line, as argv."""
    text = (ROOT / "README.md").read_text()
    section = text.split("**Main job**", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = section.strip().split("&&")[-1].strip()
    assert command.startswith("edgekit optimize "), command
    return shlex.split(command)[1:]


def _project_files() -> set[str]:
    """What sits in the project root (ignoring caches Python and pytest write)."""
    return {p.name for p in ROOT.iterdir() if p.name not in ("__pycache__", ".pytest_cache")}


def _run(args: list[str], timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_main_job(tmp_path):
    args = readme_main_command()
    assert args[:2] == ["optimize", "--recipe"] and (ROOT / args[2]).is_file()
    before = _project_files()
    out = tmp_path / "out"
    result = _run([*args, "--out", str(out), *LEAN_BENCH])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _project_files() == before, "the main job wrote outside its --out"
    report = read_json(out / "report.json")
    base, opt = report["baseline"], report["optimized"]
    assert report["passed"] is True and report["check"]["samples"] == DEV_ROWS
    assert report["accuracy_drop"] == pytest.approx(base["accuracy"] - opt["accuracy"], abs=1e-9)
    # within the budget as the gate counts it (report_schema: + 1e-12)
    assert report["max_accuracy_drop"] == 0.01 and report["accuracy_drop"] <= report["max_accuracy_drop"] + 1e-12
    assert opt["backend"] == "onnxruntime" and opt["precision"] == "int8"
    assert 0 < opt["latency_ms"]["p50"] < base["latency_ms"]["p50"] and report["speedup_p50"] > 1
    for name in ("model.onnx", "tokenizer.json", "config.json", "report.md", "manifest.json"):
        assert (out / name).is_file(), name
    # the environment block names the threads both models were timed at (it said "default" while bench used 1)
    threads = report["bench"]["threads"]
    assert isinstance(threads, int) and report["environment"]["threads"]["intra_op"] == threads
    assert f"Threads: intra-op {threads}" in (out / "report.md").read_text()
    last = [line for line in result.stdout.splitlines() if line.strip()][-1]
    assert last.startswith("PASSED") and f"{report['speedup_p50']:.2f}x" in last, last


@pytest.mark.tensorrt_rtx
@pytest.mark.skipif(not available("tensorrt_rtx"), reason="tensorrt_rtx not installed (pip install 'edgekit[rtx]')")
def test_optimize_tensorrt_rtx_int8_two_compute_capabilities(ref_model, sst2_dev, sst2_train, tmp_path):
    out = tmp_path / "rtx"
    result = _run(["optimize", str(ref_model), "--data", str(sst2_dev), "--out", str(out),
                   "--target", "tensorrt-rtx", "--compute-capability", "8.6,12.0",
                   "--calibration-data", str(sst2_train), *LEAN])
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(out / "report.json")
    base, opt = report["baseline"], report["optimized"]
    assert report["passed"] is True and report["target"] == "tensorrt-rtx"
    assert opt["precision"] == "int8" and report["accuracy_drop"] <= 0.01 + 1e-12  # the gate's own tolerance
    side = read_json(out / "model.engine.json")
    assert side["backend"] == "tensorrt-rtx" and side["precision"] == "int8"
    assert side["compute_capabilities"] == ["8.6", "12.0"] and side["verification"]["network"] == "passed"
    assert side["engine_bytes"] == (out / "model.engine").stat().st_size > 0
    carried = side["onnx"]["carried"]  # what the parsed ONNX carries into the engine: int8 Q/DQ
    assert carried["carries"] == "int8" and carried["quantize_nodes"] > 0 and carried["dequantize_nodes"] > 0
    assert (out / "model.int8.onnx").is_file()  # the exact ONNX the engine was built from; its accuracy gates
    stages = {s["name"]: s for s in report["stages"]}
    assert re.search(r"accuracy from model\.int8\.onnx", stages["quantize+build"]["notes"])
    if opt["latency_ms"] is None:  # no GPU here: never an estimate
        assert opt["latency_note"].startswith("not measured")
    else:
        assert opt["latency_ms"]["p50"] > 0
    assert base["latency_ms"]["p50"] > 0
