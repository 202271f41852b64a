"""What ``optimize`` does for a TensorRT target: int8 (with per-layer fallback) or fp16 ONNX -> engine.

The engine is built ahead of time (TensorRT-RTX builds without a GPU).
Accuracy comes from the ONNX the engine was built from — the same precision —
run on ONNX Runtime. Engine latency is measured only where a GPU and the
backend are present; otherwise it is reported as not measured, never invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .artifact import Artifact, resolve
from .environment import gpu_info

ENGINE_TARGETS = ("tensorrt", "tensorrt-rtx")
NO_GPU = "not measured (no GPU)"


@dataclass
class EngineResult:
    engine: Artifact            # the engine file with its sidecar as manifest
    accuracy_onnx: Path         # the ONNX the engine was built from (same precision)
    quantized: Artifact | None  # the int8 QDQ artifact (None for fp16/fp32)
    latency_note: str           # why engine latency is (not) measured here


def engine_for_target(fp32: Artifact, out_dir: Path, work: Path, options, data, calibration_data) -> EngineResult:
    """Quantize (int8 + fallback) or keep fp32/fp16, then build the engine into ``out_dir/model.engine``."""
    from .engine import BuildOptions, build

    quantized = None
    source = fp32
    if options.precision == "int8":
        quantized = _int8_with_fallback(fp32, work / "int8", options, data, calibration_data)
        source = quantized
    bopts = BuildOptions(backend=options.target, precision=options.precision,
                         compute_capabilities=list(options.compute_capabilities or []))
    engine = build(source.path, out_dir / "model.engine", bopts, data=data, force=True,
                   text_column=options.text_column)
    built_from = Path(engine.manifest["onnx"]["built_from"])
    return EngineResult(engine, built_from, quantized, latency_note())


def latency_note() -> str:
    return "measured on GPU" if gpu_info() else NO_GPU


def _int8_with_fallback(fp32: Artifact, out: Path, options, data, calibration_data) -> Artifact:
    """Symmetric S8S8 QDQ; the most sensitive nodes stay in float until half the gate's budget holds on a
    held-out labeled split (the other half is margin for the gate's own data)."""
    from .fallback import FallbackOptions, quantize_with_fallback
    from .quantize import QuantizeOptions

    qopts = QuantizeOptions(target=options.target, mode="static", per_channel=options.per_channel,
                            calibration_method=options.calibration_method,
                            calibration_samples=options.calibration_samples)
    validation = options.validation_data or calibration_data or data
    fopts = FallbackOptions(max_accuracy_drop=options.max_accuracy_drop / 2)
    return resolve(quantize_with_fallback(fp32.path, out, qopts, fopts, validation_data=validation,
                                          calibration_data=calibration_data or data,
                                          text_column=options.text_column, label_column=options.label_column).path)
