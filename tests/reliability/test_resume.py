"""Resume and the step cache: a killed ``optimize`` reruns only what is missing; concurrent runs share one cache.

Runtime: about 60 s on 2 busy cores (three optimize runs of the tiny model, one killed).
The kill lands deterministically: ``EDGEKIT_TEST_PAUSE_IN_STEP`` stops the first run at quantize's first
file write into its temporary cache folder (see edgekit/cache.py), and the test kills it there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_helpers import command, run_cli, temps_in

from edgekit.artifact import sha256_file
from edgekit.cache import PAUSE_ENV, StepCache, entry_is_complete


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.is_dir() and not p.name.startswith("."))


def _kill_mid_quantize(args: list, cache: Path, marker: Path, tmpdir: Path, timeout: float = 240) -> None:
    """Start optimize paused at quantize's first file write (edgekit.cache's test hook); SIGKILL it there."""
    env = {**os.environ, PAUSE_ENV: f"quantize:{marker}", "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            assert proc.poll() is None, f"optimize ended before quantize wrote: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "optimize did not reach quantize in time"
            time.sleep(0.05)
        assert int(marker.read_text()) == proc.pid
        # the state the kill lands in: export complete, quantize's entry half-written in a temporary folder
        assert [entry_is_complete(e) for e in _entries(cache / "export")] == [True]
        assert temps_in(cache / "quantize") and not _entries(cache / "quantize")
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_killed_optimize_resumes_from_cache_with_identical_result(tiny_model, tiny_data, tiny_int8, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "runs" / "out"
    out.parent.mkdir()
    args = ["optimize", tiny_model, "--data", tiny_data, "--out", out, "--iterations", "3", "--warmup", "1",
            "--cache-dir", cache, "--json"]
    tmpdir = tmp_path / "system-tmp"
    tmpdir.mkdir()
    _kill_mid_quantize(args, cache, tmp_path / "paused", tmpdir)
    assert not out.exists(), "a killed run must leave no OUT"
    # scratch space lives inside the writer's temporary folder, which the next writer sweeps; a folder in the
    # system's temp dir would outlive the SIGKILL (one edgekit-q-* was left in /tmp per suite run)
    # (and nothing else: ONNX Runtime's telemetry file .ses stays out too, edgekit/__init__.py)
    assert not list(tmpdir.iterdir()), f"the killed run left files in the temp dir: {list(tmpdir.iterdir())}"
    assert temps_in(cache / "quantize"), "the killed writer's temporary folder is still there"

    rerun = run_cli(args)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["export"]["cached"] is True and "served from the step cache" in stages["export"]["notes"]
    assert stages["quantize"]["cached"] is False
    assert report["cache"]["cached_stages"] == ["export"]
    # the same bytes an uninterrupted, uncached export + quantize gives (the tiny_int8 fixture, in-process)
    final = sha256_file(out / "model.onnx")
    assert final == sha256_file(tiny_int8 / "model.onnx")
    assert json.loads((out / "manifest.json").read_text())["files"]["model.onnx"] == final
    # what the SIGKILL left (temporary folders of dead writers) is gone after the rerun
    assert not temps_in(cache / "export") and not temps_in(cache / "quantize") and not temps_in(out.parent)

    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cache"]["cached_stages"] == ["export", "quantize"]
    assert sha256_file(out / "model.onnx") == final


WORKER = """
import json, sys, time
from edgekit.artifact import atomic_dir, write_manifest
from edgekit.cache import StepCache
cache = StepCache(sys.argv[1])
key = cache.key("demo", {"input": "same"}, {"option": 1})
with cache.slot("demo", key) as slot:
    if not slot.hit:
        with atomic_dir(slot.path) as tmp:
            (tmp / "weights.bin").write_bytes(b"w" * 1_000_000)
            time.sleep(float(sys.argv[2]))
            write_manifest(tmp, "demo", "demo", inputs={}, options={})
    print(json.dumps({"hit": slot.hit, "path": str(slot.path)}))
"""


def test_concurrent_runs_share_a_cache_entry_without_corrupting_it(tmp_path):
    """B starts while A is writing the entry: B must wait on the lock, then reuse A's complete entry.

    Without the lock B would find no entry, sweep A's temporary folder as stale and rebuild: A would fail.
    """
    cache = tmp_path / "cache"
    a = subprocess.Popen([sys.executable, "-c", WORKER, str(cache), "2"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not temps_in(cache / "demo") and time.monotonic() < deadline:
        assert a.poll() is None, "A ended before writing"
        time.sleep(0.01)
    b = subprocess.Popen([sys.executable, "-c", WORKER, str(cache), "0"], stdout=subprocess.PIPE, text=True)
    ra, rb = json.loads(a.communicate(timeout=60)[0]), json.loads(b.communicate(timeout=60)[0])
    assert a.returncode == 0 and b.returncode == 0
    assert ra["hit"] is False and rb["hit"] is True and ra["path"] == rb["path"]
    assert entry_is_complete(Path(ra["path"])) and len(_entries(cache / "demo")) == 1
    assert not temps_in(cache / "demo")


def test_a_corrupt_cache_entry_is_rebuilt_not_served(tmp_path):
    cache = StepCache(tmp_path / "cache")
    key = cache.key("demo", {"input": 1}, {})
    with cache.slot("demo", key) as slot:
        slot.path.mkdir()
        (slot.path / "weights.bin").write_bytes(b"good bytes")
        from edgekit.artifact import write_manifest

        write_manifest(slot.path, "demo", "demo", inputs={}, options={})
    with cache.slot("demo", key) as slot:
        assert slot.hit
        (slot.path / "weights.bin").write_bytes(b"bad")  # e.g. a disk error or a hand edit
    with cache.slot("demo", key) as slot:
        assert not slot.hit and not slot.path.exists()


def test_cache_key_changes_with_inputs_options_versions_and_edgekit_source(monkeypatch):
    import edgekit.cache as cache_module

    cache = StepCache("/nonexistent")
    base = cache.key("export", {"model": "a"}, {"opset": 18})
    assert base == cache.key("export", {"model": "a"}, {"opset": 18})
    assert base != cache.key("export", {"model": "b"}, {"opset": 18})
    assert base != cache.key("export", {"model": "a"}, {"opset": 17})
    assert base != cache.key("quantize", {"model": "a"}, {"opset": 18})
    monkeypatch.setattr(cache_module, "versions", lambda: {"onnx": "0.0"})
    changed_tools = cache.key("export", {"model": "a"}, {"opset": 18})
    assert changed_tools != base
    monkeypatch.setattr(cache_module, "edgekit_source_digest", lambda: "edited")
    assert cache.key("export", {"model": "a"}, {"opset": 18}) != changed_tools
