"""Determinism: the same inputs and options give byte-identical ONNX, across processes, recorded in manifests.

Runtime: about 25 s (one export and two quantizations in subprocesses, two static quantizations in-process).
"""

from __future__ import annotations

import json
import os
import subprocess

from reliability_helpers import command, run_cli

from edgekit.artifact import sha256_file
from edgekit.quantize import QuantizeOptions, quantize


def test_export_and_quantize_are_byte_identical_across_processes(tiny_model, tiny_data, tiny_onnx, tiny_int8, tmp_path):
    """The session fixtures were made in this process; the CLI repeats them in fresh ones (new hash seeds).
    The export leaves nothing in its $TMPDIR: not torch's compile-cache folder, which importing torch._dynamo
    (the dynamo exporter does) makes there unless TORCHINDUCTOR_CACHE_DIR is set (as torch sets it in this
    process once made: the child must not inherit it)."""
    scratch = tmp_path / "system-tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"} | {"TMPDIR": str(scratch)}
    exported = subprocess.run(command(["export", tiny_model, "--data", tiny_data, "--out", tmp_path / "fp32"]),
                              capture_output=True, text=True, timeout=240, env=env)
    assert exported.returncode == 0, exported.stderr
    assert list(scratch.iterdir()) == []
    quantized = run_cli(["quantize", tmp_path / "fp32", "--out", tmp_path / "int8"])
    assert quantized.returncode == 0, quantized.stderr
    for fixture, again in ((tiny_onnx, tmp_path / "fp32"), (tiny_int8, tmp_path / "int8")):
        digest = sha256_file(again / "model.onnx")
        assert digest == sha256_file(fixture / "model.onnx"), f"{again.name}: not byte-identical"
        assert json.loads((again / "manifest.json").read_text())["files"]["model.onnx"] == digest
        assert json.loads((fixture / "manifest.json").read_text())["files"]["model.onnx"] == digest


def test_static_qdq_calibration_is_deterministic(tiny_onnx, tiny_data, tmp_path):
    options = QuantizeOptions(target="tensorrt", calibration_samples=16)
    first = quantize(tiny_onnx, tmp_path / "a", options, calibration_data=tiny_data)
    second = quantize(tiny_onnx, tmp_path / "b", options, calibration_data=tiny_data)
    assert sha256_file(first.model_file) == sha256_file(second.model_file)
    assert first.manifest["files"] == second.manifest["files"]
