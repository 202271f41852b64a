"""`edgekit report` over real runs (optimize OUT, bench and sweep JSON), opened in headless Chromium (~40 s).

The browser is Debian's chromium (/usr/bin/chromium; .ci/run installs it). Without
it the browser tests skip, except under CI (CI=true), where they fail.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit.bench import BenchOptions, bench, summarize, sweep

QUICK = BenchOptions(warmup=2, warmup_seconds=0.0, iterations=30, min_seconds=0.0)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IMG = re.compile(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_onnx, tiny_int8, tiny_data, tmp_path_factory):
    from edgekit.pipeline import GateOptions, OptimizeOptions, optimize

    folder = tmp_path_factory.mktemp("runs")
    opt = folder / "optimize-out"
    optimize(tiny_model, tiny_data, opt, OptimizeOptions(bench=BenchOptions(iterations=20, warmup=2), gate=GateOptions(max_accuracy_drop=0.5)))
    noisy = bench(tiny_onnx, tiny_data, QUICK)
    noisy.update(summarize([1.0] * 15 + [3.0] * 15, 1))  # a real run carrying a known-noisy sample
    noisy["samples_ms"], noisy["warnings"] = [1.0] * 15 + [3.0] * 15, ["noisy run: CV 51% is above 10%"]
    (folder / "fp32.json").write_text(json.dumps(noisy))
    (folder / "int8.json").write_text(json.dumps(bench(tiny_int8, tiny_data, QUICK)))
    grid = sweep(tiny_int8, tiny_data, [1, 2, 4], [None, 16], BenchOptions(**{**QUICK.__dict__, "iterations": 5}))
    (folder / "sweep.json").write_text(json.dumps(grid))
    return [opt, folder / "fp32.json", folder / "int8.json", folder / "sweep.json"]


@pytest.fixture(scope="module")
def report_dir(runs, tmp_path_factory):
    from edgekit.report import report

    out = tmp_path_factory.mktemp("report") / "rep"
    report(runs, out)
    return out


def test_report_files_and_contents(report_dir):
    md = (report_dir / "report.md").read_text()
    combined = json.loads((report_dir / "report.json").read_text())
    assert combined["schema"] == "edgekit.report/1" and len(combined["runs"]) == 4
    names = [r["name"] for r in combined["rows"]]
    assert names[:2] == ["baseline (pytorch, fp32)", "optimized (onnxruntime, int8)"] and len(names) == 4
    assert all(combined["rows"][i]["accuracy"] is not None for i in (0, 1))
    assert combined["rows"][0]["speedup_p50"] == pytest.approx(1.0)
    assert len(combined["sweeps"]) == 1 and len(combined["sweeps"][0]["points"]) == 6
    for name in names:
        assert f"| {name} |" in md
    assert "NOISY" in md and "**WARNING** fp32.json: noisy run" in md  # the noisy run is flagged, not hidden
    assert "CPU:" in md and "Versions:" in md and "onnxruntime" in md


def test_html_is_self_contained_with_plots(report_dir):
    html = (report_dir / "report.html").read_text()
    images = IMG.findall(html)
    assert len(images) == 4  # distribution, percentiles, accuracy vs latency, one sweep
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert "noisy run" in html


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must apt-get install -y chromium")
        pytest.skip("Debian chromium not installed (apt-get install -y chromium)")
    return exe


def _browse(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_chromium_decodes_every_plot(report_dir, tmp_path):
    url = (report_dir / "report.html").resolve().as_uri()
    result = _browse(["--virtual-time-budget=10000", "--dump-dom", url], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert len(IMG.findall(dom)) == 4
    loaded = re.search(r'<body[^>]*data-images-loaded="(\d+)"', dom)
    assert loaded and int(loaded.group(1)) == 4, "the browser did not decode every plot"


def test_chromium_screenshot_is_not_blank(report_dir, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    url = (report_dir / "report.html").resolve().as_uri()
    result = _browse([f"--screenshot={shot}", "--window-size=1200,3000", "--hide-scrollbars", url], tmp_path)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1200, 3000)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200, "screenshot is (nearly) uniform"
    white = {rgb: n for n, rgb in colors}.get((255, 255, 255), 0)
    assert white < 0.97 * image.size[0] * image.size[1], "screenshot is almost all white"
