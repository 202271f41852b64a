"""One optimize run reads each data file once, leaves the working directory empty, and honours its options.

Runs ``edgekit.pipeline.optimize`` in this process on the tiny model (cpu target; tensorrt-rtx too when
tensorrt_rtx is importable: it builds engines without a GPU). About 1-2 min on 2 busy cores.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import requires_toolchain
from edgekit.bench import BenchOptions
from edgekit.options import DataOptions, GateOptions, OptimizeOptions
from edgekit.pipeline import PAIRED_ROUNDS
from edgekit.prune import PruneOptions
from edgekit.quantize import QuantizeOptions

pytestmark = requires_toolchain
requires_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                  reason="tensorrt_rtx not installed (pip install tensorrt-rtx; dev extra)")
QUICK = BenchOptions(iterations=3, warmup=1, min_seconds=0.0, warmup_seconds=0.0, samples=16)


@pytest.fixture
def reads(monkeypatch):
    """Every parse of a data file by edgekit.data, by resolved path."""
    import edgekit.data as data

    seen: Counter = Counter()
    original = data._read_file

    def spy(path):
        seen[str(Path(path).resolve())] += 1
        return original(path)
    monkeypatch.setattr(data, "_read_file", spy)
    return seen


@pytest.fixture
def files(tiny_data, tmp_path) -> dict[str, Path]:
    """The gate file and two other labeled files (same rows, other paths: what a user passes as train splits)."""
    out = {"gate": tmp_path / "gate.tsv", "train": tmp_path / "train.tsv", "validation": tmp_path / "validation.tsv"}
    for path in out.values():
        path.write_text(tiny_data.read_text())
    return out


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_cpu_optimize_reads_each_file_once_and_leaves_cwd_empty(tiny_model, files, reads, empty_cwd, tmp_path,
                                                                capsys):
    from edgekit import progress
    from edgekit.pipeline import optimize

    progress.set_quiet(False)

    options = OptimizeOptions(quantize=QuantizeOptions(mode="static", calibration_samples=8), bench=QUICK,
                              gate=GateOptions(max_accuracy_drop=0.5),
                              prune=PruneOptions(ffn=0.5, importance="magnitude", recover_epochs=0),
                              data=DataOptions(validation_data=str(files["validation"]), prune_data=str(files["train"])))
    report = optimize(tiny_model, files["gate"], tmp_path / "out", options)
    assert [s["name"] for s in report["stages"]] == ["prune", "export", "quantize", "check", "bench", "bench (interleaved)"]
    assert report["optimized"]["latency_ms"] and (tmp_path / "out" / "model.onnx").is_file()
    by_name = {Path(p).name: n for p, n in reads.items()}
    assert by_name == {"gate.tsv": 1, "validation.tsv": 1, "train.tsv": 1}
    assert report["check"]["eval_batch_size"] == 32  # static int8: GateOptions.batch_for
    err = capsys.readouterr().err  # every stage says when it starts and ends (--quiet: set_quiet(True))
    assert all(f"[edgekit] {s} done in" in err for s in ("prune", "export", "quantize", "check", "bench")), err
    # loops over data end with a summary line off a terminal (a bar on one); the fallback prints each trial
    assert all(line in err for line in ("sensitivity: 32 sentences", "calibrate: 8 sentences", "fallback trial 0:",
                                         f"interleaved rounds: {PAIRED_ROUNDS} rounds")), err
    assert list(empty_cwd.iterdir()) == []


@requires_rtx
def test_tensorrt_rtx_optimize_reads_the_gate_once_and_leaves_cwd_empty(tiny_model, files, reads, empty_cwd,
                                                                      tmp_path):
    from edgekit.pipeline import optimize

    options = OptimizeOptions(target="tensorrt-rtx", bench=QUICK, gate=GateOptions(max_accuracy_drop=0.5),
                              quantize=QuantizeOptions(calibration_samples=8),
                              data=DataOptions(calibration_data=str(files["train"])))
    report = optimize(tiny_model, files["gate"], tmp_path / "out", options)
    assert (tmp_path / "out" / "model.engine").is_file() and report["optimized"]["precision"] == "int8"
    by_name = {Path(p).name: n for p, n in reads.items()}
    assert by_name == {"gate.tsv": 1, "train.tsv": 1}  # the fallback judged on train.tsv, never on the gate
    lineage = json.loads((tmp_path / "out" / "manifest.json").read_text())["lineage"]
    assert lineage[1]["fallback"]["trials"] and lineage[-1]["precision"] == "int8"
    assert list(empty_cwd.iterdir()) == []
