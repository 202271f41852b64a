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
from .data import TextDataset
from .environment import gpu_info
from .errors import InputError
from .options import ENGINE_TARGETS
from .report_schema import NO_GPU

__all__ = ["ENGINE_TARGETS", "NO_GPU", "EngineResult", "engine_for_target", "latency_note"]


@dataclass
class EngineResult:
    engine: Artifact            # the engine file with its sidecar as manifest
    accuracy_onnx: Path         # the ONNX the engine was built from (same precision)
    quantized: Artifact | None  # the int8 QDQ artifact (None for fp16/fp32)
    latency_note: str           # why engine latency is (not) measured here


def engine_for_target(fp32: Artifact, out_dir: Path, work: Path, options, data: TextDataset,
                      calibration: TextDataset | None, validation: TextDataset | None) -> EngineResult:
    """Quantize (int8 + fallback) or keep fp32/fp16, then build the engine into ``out_dir/model.engine``.

    ``options`` is the run's OptimizeOptions; ``data`` the gate rows (they set the engine's sequence
    profile only); ``calibration``/``validation`` the rows int8 is calibrated and its fallback judged on,
    never the gate's (OptimizeOptions.validate and pipeline.load_run_data refuse that).
    """
    from .engine import build

    quantized = None
    source = fp32
    if options.precision == "int8":
        quantized = _int8_with_fallback(fp32, work / "int8", options, calibration, validation)
        source = quantized
    engine = build(source.path, out_dir / "model.engine", options.build_options(), data=data, force=True)
    built_from = Path(engine.manifest["onnx"]["built_from"])
    return EngineResult(engine, built_from, quantized, latency_note())


def latency_note() -> str:
    return "measured on GPU" if gpu_info() else NO_GPU


def _int8_with_fallback(fp32: Artifact, out: Path, options, calibration: TextDataset | None,
                        validation: TextDataset | None) -> Artifact:
    """S8S8 QDQ in the user's quantize settings (mode static: TensorRT takes no other); the most sensitive
    nodes stay in float until half the gate's budget holds on the held-out labeled ``validation`` rows."""
    from .fallback import quantize_with_fallback
    from .pipeline import fallback_options

    if calibration is None or validation is None:  # OptimizeOptions.validate refuses this first
        raise InputError(f"TensorRT int8 for {options.target} needs labeled rows other than the gate's", None,
                         "Pass --calibration-data (or --validation-data) with labeled training rows")
    return resolve(quantize_with_fallback(fp32.path, out, options.quantize_options(), fallback_options(options),
                                          validation_data=validation, calibration_data=calibration).path)
