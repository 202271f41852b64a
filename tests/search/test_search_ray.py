"""Trials as Ray tasks on a local Ray cluster (``ray.init(num_cpus=2)``) give the local loop's winner.

About 30 s on a quiet 2-core box (Ray's start is ~10 s of it).

The same seed must give the same candidates, the same measured accuracy and
model file for every trial, and the same winner. The latency tie band is set
wide here: on a shared 2-core CI runner, sub-millisecond p50s of a tiny model
swing by 2x between runs whatever the engine, so the winner must rest on the
deterministic part of the ranking (accuracy, then file size, then id), which
is what has to agree between engines. Per-layer fallback is left out of this
space: its loop keeps the fastest of its own trials, a latency-driven choice.
"""

import json
import os
import shutil
import signal
import sys
import tempfile

import pytest

from edgekit.artifact import resolve, sha256_file
from edgekit.search import SearchOptions, search
from search_helpers import interrupt_at

pytest.importorskip("ray", reason="the search extra (ray) is not installed")


def _options(**engine) -> SearchOptions:
    return SearchOptions(seed=11, modes=["dynamic", "static"], calibration_methods=["minmax"],
                         calibration_samples=[16], per_channel=[True, False], fallback_budgets=[None], threads=1,
                         latency_iterations=20, latency_seconds=0.2, latency_tolerance=10.0, **engine)


def _ray_sessions() -> set[str]:
    """Session folders where Ray keeps them by default: $TMPDIR/ray on Linux when TMPDIR is set, else /tmp/ray."""
    found = set()
    for root in {"/tmp", os.environ.get("TMPDIR") or "/tmp"}:
        folder = os.path.join(root, "ray")
        found |= {os.path.join(folder, n) for n in os.listdir(folder)} if os.path.isdir(folder) else set()
    return found


def test_ray_cluster_gives_the_local_winner(tiny_onnx, tiny_data, tmp_path, monkeypatch):
    """...and leaves no session files behind: without RAY_TMPDIR, Ray would keep each one in /tmp/ray."""
    local = search(tiny_onnx, tiny_data, tmp_path / "local", _options())
    temp = tempfile.mkdtemp(prefix="ek-", dir="/tmp")  # short: the scratch goes in it, as in a usual $TMPDIR
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", temp)
    before = _ray_sessions()
    try:
        on_ray = search(tiny_onnx, tiny_data, tmp_path / "ray", _options(ray_address="local", ray_num_cpus=2))
        assert os.listdir(temp) == [] and _ray_sessions() == before
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert on_ray["search"]["engine"] == "ray (local)" and local["search"]["engine"] == "local"
    assert [t["id"] for t in on_ray["search"]["trials"]] == [t["id"] for t in local["search"]["trials"]]
    assert len(local["search"]["trials"]) == 5 and on_ray["search"]["stopped"] == local["search"]["stopped"] == "all candidates run"
    for mine, theirs in zip(local["search"]["trials"], on_ray["search"]["trials"]):
        assert mine["status"] == theirs["status"] == "ok", (mine, theirs)
        assert (mine["accuracy"], mine["bytes"]) == (theirs["accuracy"], theirs["bytes"])
        assert mine["worker"]["pid"] == os.getpid() and theirs["worker"]["pid"] != os.getpid()  # Ray workers ran them
    assert on_ray["search"]["winner"]["id"] == local["search"]["winner"]["id"]
    assert on_ray["search"]["winner"]["precision"] != "fp32"
    local_art, ray_art = resolve(tmp_path / "local"), resolve(tmp_path / "ray")
    assert sha256_file(ray_art.model_file) == sha256_file(local_art.model_file)  # shipped back byte for byte


def test_unreachable_ray_address_is_one_line(tiny_onnx, tiny_data, tmp_path):
    from edgekit.errors import BackendError

    with pytest.raises(BackendError) as err:
        search(tiny_onnx, tiny_data, tmp_path / "nowhere", _options(ray_address="127.0.0.1:1"))
    assert "Cannot connect to Ray at '127.0.0.1:1'" in err.value.message and "\n" not in err.value.message


def test_sigterm_during_ray_trials_keeps_the_best_and_exits_143(tiny_onnx, tiny_data, tmp_path):
    """``--ray-address local`` from the CLI, stopped by SIGTERM while Ray runs trials (Ray would turn it into
    a plain KeyboardInterrupt, or exit through its own SIGTERM handler)."""
    out = tmp_path / "ray-out"
    cmd = [sys.executable, "-m", "edgekit", "optimize", str(tiny_onnx), "--data", str(tiny_data), "--out", str(out),
           "--search", "--mode", "dynamic", "--threads", "1", "--ray-address", "local"]

    def baseline_done_and_more_running(seen):
        done = [i for i, line in enumerate(seen) if line.startswith("trial fp32: accuracy")]
        return bool(done) and any(line.endswith("submitted to Ray") for line in seen[done[0]:])
    rc, log = interrupt_at(cmd, baseline_done_and_more_running, signal.SIGTERM)
    assert rc == 143, log
    assert any(line.startswith("Error: terminated (SIGTERM)") for line in log), log
    state = json.loads((out / "search_state.json").read_text())
    assert state["stopped"] == "interrupted" and "fp32" in state["trials"] and len(state["trials"]) < 5
    assert resolve(out).manifest["search"]["winner"] == state["best"]

