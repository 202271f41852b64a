"""The three bugs the copied options caused, each pinned by a test that failed before the fix.

(a) ``--mode`` was ignored for TensorRT targets (targets.py forced static): ``dynamic`` is now refused with one
    line, and the user's quantize settings reach the TensorRT int8 step as they are.
(b) TensorRT per-layer fallback was judged on the gate data when no calibration/validation data was given:
    now refused with one line naming --calibration-data / --validation-data (never the gate's rows).
(c) ``eval_batch_size``'s documented default (= --batch-size) was not what the gate did (32 unless dynamic):
    the documentation now states the rule the code applies (GateOptions.batch_for), checked here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.errors import InputError
from edgekit.options import STATIC_GATE_BATCH, DataOptions, GateOptions, OptimizeOptions
from edgekit.quantize import QuantizeOptions


def _error_line(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["optimize", *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("target", ["tensorrt", "tensorrt-rtx"])
def test_a_dynamic_mode_is_refused_for_tensorrt_targets(tmp_path, target):
    line = _error_line(["model", "--data", "d.tsv", "--out", str(tmp_path / "o"), "--target", target,
                        "--mode", "dynamic", "--calibration-data", "train.tsv"])
    assert f"Dynamic quantization cannot target {target}" in line and "--mode static" in line
    assert not (tmp_path / "o").exists()


def test_a_the_users_quantize_settings_reach_the_tensorrt_int8_step(monkeypatch, tmp_path):
    import edgekit.fallback as fallback
    from edgekit import targets

    seen = {}

    def capture(onnx, out, qoptions, options, validation_data, calibration_data=None, force=False):
        seen.update(qoptions=qoptions, budget=options.max_accuracy_drop, validation=validation_data,
                    calibration=calibration_data)
        raise InputError("captured", None, None)
    monkeypatch.setattr(fallback, "quantize_with_fallback", capture)
    options = OptimizeOptions(target="tensorrt-rtx", gate=GateOptions(max_accuracy_drop=0.02),
                              quantize=QuantizeOptions(mode="static", calibration_method="entropy", per_channel=False,
                                                       calibration_samples=16))

    class Fp32:
        path = tmp_path
    with pytest.raises(InputError, match="captured"):
        targets._int8_with_fallback(Fp32(), tmp_path / "int8", options, "CAL", "VAL")
    q = seen["qoptions"]
    assert (q.target, q.mode, q.calibration_method, q.per_channel, q.calibration_samples) == \
        ("tensorrt-rtx", "static", "entropy", False, 16)
    assert (seen["budget"], seen["validation"], seen["calibration"]) == (0.01, "VAL", "CAL")


@pytest.mark.parametrize("target", ["tensorrt", "tensorrt-rtx"])
def test_b_tensorrt_int8_without_other_labeled_rows_is_refused(tmp_path, target):
    line = _error_line(["model", "--data", "d.tsv", "--out", str(tmp_path / "o"), "--target", target])
    assert "needs labeled rows other than the gate's" in line and "--calibration-data" in line
    assert "--validation-data" in line and not (tmp_path / "o").exists()


def test_b_the_gate_file_as_validation_data_is_refused(tiny_model, tiny_data, tmp_path):
    from edgekit.pipeline import optimize

    for data in (DataOptions(validation_data=str(tiny_data)), DataOptions(calibration_data=str(tiny_data))):
        with pytest.raises(InputError, match="is the gate's own data file"):
            optimize(tiny_model, tiny_data, tmp_path / "o", OptimizeOptions(target="tensorrt-rtx", data=data))
    assert not (tmp_path / "o").exists()


def test_c_the_gate_batch_is_what_its_help_says():
    help_text = OptimizeOptions.__dataclass_fields__["gate"].default_factory.__dataclass_fields__[
        "eval_batch_size"].metadata["help"]
    assert "latency batch (--batch-size) for dynamic int8" in help_text and f"{STATIC_GATE_BATCH} for static" in help_text
    gate = GateOptions()
    assert gate.batch_for("dynamic", 4) == 4                 # dynamic int8: the serving batch
    assert gate.batch_for("static", 4) == STATIC_GATE_BATCH  # static int8 (and fp16/fp32: no mode)
    assert gate.batch_for(None, 4) == STATIC_GATE_BATCH
    assert GateOptions(eval_batch_size=8).batch_for("dynamic", 4) == 8


def test_c_optimize_gates_at_that_batch(tiny_optimized):
    """The session's optimize run (cpu, dynamic int8, --batch-size 1) gated at batch 1 and says so."""
    import json

    manifest = json.loads((Path(tiny_optimized) / "manifest.json").read_text())
    report = json.loads((Path(tiny_optimized) / "report.json").read_text())
    assert manifest["eval_batch_size"] == report["check"]["eval_batch_size"] == 1
