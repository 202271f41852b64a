"""A real ``edgekit optimize --search`` on the tiny model, stopped mid-trial by SIGINT and SIGTERM, then resumed.

Between the runs OUT must be a valid artifact (manifest hashes, loadable by
the runtime) holding the best trial so far and a state with every finished
trial; the resumed runs must not rerun those. About 40 s.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_toolchain
from search_helpers import interrupt_at, started

pytestmark = requires_toolchain


def _search(tiny_onnx, tiny_data, out, *extra):
    return [sys.executable, "-m", "edgekit", "optimize", str(tiny_onnx), "--data", str(tiny_data), "--out", str(out),
            "--search", "--mode", "dynamic", "--threads", "1", "--seed", "5", *extra]


def _state(out: Path) -> dict:
    return json.loads((out / "search_state.json").read_text())


def _assert_valid_best_so_far(out: Path, finished: int) -> dict:
    from edgekit.artifact import resolve
    from edgekit.runtime import load

    art = resolve(out)  # checks every file against the manifest's sha256
    state = _state(out)
    report = json.loads((out / "report.json").read_text())
    assert len(state["trials"]) == finished
    assert state["best"] in state["trials"] and report["search"]["winner"]["id"] == state["best"]
    assert art.manifest["search"]["winner"] == state["best"]
    assert len(load(out, threads=1).predict(["a gripping , moving film"])) == 1
    assert not list(out.parent.glob(f".{out.name}.tmp-*")) and not list(out.parent.glob(f".{out.name}.old-*"))
    return state


def test_interrupted_search_leaves_a_valid_best_and_resumes(tiny_onnx, tiny_data, tmp_path):
    # run 1: Ctrl-C while the third trial (fp32, the default int8, then one more) is running. A trial lasts ~1 s:
    # when the last one ends before the signal lands the search exits 0 having run everything, which says nothing
    # about interruption, so that attempt is repeated in a fresh folder (at most 3 tries; each must reach a trial)
    for attempt in range(3):
        out = tmp_path / f"searched{attempt}"
        rc, log = interrupt_at(_search(tiny_onnx, tiny_data, out), started(3), signal.SIGINT)
        if rc != 0:
            break
        assert _state(out)["stopped"] == "all candidates run", log  # exit 0 only when it really finished
    assert rc == 130, log
    assert any("continue with --resume" in line for line in log), log
    assert not any("nothing half-written was kept" in line for line in log), log  # it followed, contradicting it
    first = _assert_valid_best_so_far(out, finished=2)
    assert first["stopped"] == "interrupted"
    interrupted = [line.split()[1].rstrip(":") for line in log if line.endswith(": started")][-1]
    assert interrupted not in first["trials"]
    assert (out.parent / f".{out.name}.search").is_dir()  # the fp32 export and contenders, kept for --resume

    # run 2: resumed, then SIGTERM during its second trial
    rc, log = interrupt_at(_search(tiny_onnx, tiny_data, out, "--resume"), started(2), signal.SIGTERM)
    assert rc == 143, log
    assert "search: 5 candidates, 2 already run, engine local" in log
    assert next(line for line in log if line.endswith(": started")) == f"trial {interrupted}: started"
    assert any(line.startswith("Warning: no --calibration-data") for line in log)
    second = _assert_valid_best_so_far(out, finished=3)
    assert second["stopped"] == "interrupted" and second["elapsed_s"] > first["elapsed_s"]

    # run 3: resumed to the end
    done = subprocess.run(_search(tiny_onnx, tiny_data, out, "--resume", "--json"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "search: 5 candidates, 3 already run" in done.stderr
    final = _assert_valid_best_so_far(out, finished=5)
    for tid, record in second["trials"].items():
        assert final["trials"][tid] == record  # measured once, never rerun
    assert first["trials"].items() <= final["trials"].items()
    report = json.loads(done.stdout)
    assert report["search"]["stopped"] == "all candidates run" and [t["status"] for t in report["search"]["trials"]] == ["ok"] * 5
    assert report["search"]["winner"]["id"] == final["best"] and report["search"]["pareto_front"]
    assert not (out.parent / f".{out.name}.search").exists()


def test_resume_refuses_other_options(tiny_onnx, tiny_data, tmp_path):
    out = tmp_path / "budgeted"
    first = subprocess.run(_search(tiny_onnx, tiny_data, out, "--time-budget", "1s"), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    assert "time budget spent" in first.stderr
    state = _state(out)
    assert list(state["trials"]) == ["fp32"] and state["stopped"] == "time budget spent"  # the reference always runs
    other = subprocess.run(_search(tiny_onnx, tiny_data, out, "--resume", "--max-accuracy-drop", "0.02"),
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 1
    lines = [line for line in other.stderr.splitlines() if not line.startswith("Warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: Cannot resume the search") and "max_accuracy_drop" in lines[0]
    assert _state(out) == state  # untouched


@pytest.mark.parametrize("flag", [["--resume"], ["--time-budget", "10m"], ["--ray-address", "local"]])
def test_search_flags_need_search(tiny_onnx, tiny_data, tmp_path, flag):
    cmd = [sys.executable, "-m", "edgekit", "optimize", str(tiny_onnx), "--data", str(tiny_data), "--out",
           str(tmp_path / "x"), *flag]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "needs --search" in result.stderr
