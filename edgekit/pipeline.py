"""``optimize``: export -> quantize -> check -> bench the original and the result, with a gate.

Writes OUT atomically: the optimized model with tokenizer/config, report.json,
report.md and manifest.json. A failed accuracy gate keeps the artifact, marks
it failed (report and manifest ``passed: false``) and raises GateFailedError
(exit 3).
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .artifact import ONNX_NAME, atomic_dir, resolve, sha256_file, sha256_folder, write_manifest
from .bench import BenchOptions, bench
from .cache import StepCache, file_digest
from .check import compare, evaluate, labeled_data
from .environment import environment
from .errors import GateFailedError, InputError, ModelError
from .export import ExportOptions, export
from .quantize import QuantizeOptions, TARGETS, quantize
from .report import optimize_markdown, write_json
from .sessions import encoder_for, session_for
from .environment import gpu_info
from .targets import ENGINE_TARGETS, NO_GPU, EngineResult, engine_for_target


@dataclass
class OptimizeOptions:
    """Every option of ``optimize``; recipe keys and CLI flags share these names."""

    target: str = "cpu"
    max_accuracy_drop: float = 0.01       # fraction: 0.01 = 1.0 accuracy point
    text_column: str | None = None
    label_column: str | None = None
    task: str | None = None
    opset: int = 18
    mode: str | None = None               # quantization mode; None = the target's default
    precision: str = "int8"               # TensorRT targets: int8 (Q/DQ + fallback) | fp16 | fp32
    compute_capabilities: list[str] | None = None  # TensorRT-RTX targets, e.g. ["8.6", "12.0"]; None = default
    validation_data: str | None = None    # labeled rows for per-layer fallback (None: cpu = no fallback;
                                          # TensorRT int8 = the calibration data), never the gate's data
    calibration_data: str | None = None   # None = the --data file itself
    calibration_method: str = "minmax"
    calibration_samples: int = 128
    per_channel: bool = True
    max_samples: int | None = None        # labeled examples used for the gate (None = all)
    batch_size: int = 1                   # latency batch size
    eval_batch_size: int | None = None    # gate batch size; None = batch_size. Dynamic int8 scales depend on
                                          # the batch (padding enters them): gate at the size you serve
    iterations: int = 200
    warmup: int = 20
    threads: int | None = None
    trust_remote_code: bool = False
    prune_ffn: float = 0.0                # > 0 or prune_layers > 0: a prune + recovery stage before export
    prune_layers: int = 0                 # (edgekit.prune; its accuracy and latency are reported as a stage)
    prune_heads: float = 0.0
    prune_data: str | None = None         # labeled training rows for importance and recovery (required to prune)
    prune_importance: str = "taylor"
    prune_recover_epochs: float = 1.0
    prune_recover_samples: int | None = 16000
    prune_distill: bool = True

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"Unknown target '{self.target}'", None, f"Choose one of: {', '.join(TARGETS)}")
        if self.precision not in ("int8", "fp16", "fp32"):
            raise InputError(f"Unknown precision '{self.precision}'", None, "Choose one of: int8, fp16, fp32")
        if self.target == "cpu" and self.precision != "int8":
            raise InputError(f"--precision {self.precision} applies to TensorRT targets only",
                             "the cpu target is int8 on ONNX Runtime", "Drop --precision, or pass --target tensorrt-rtx")
        if not 0 <= self.max_accuracy_drop < 1:
            raise InputError(f"--max-accuracy-drop must be a fraction in [0, 1), got {self.max_accuracy_drop}",
                             None, "Use 0.01 for one accuracy point")

    @classmethod
    def from_dict(cls, values: dict) -> "OptimizeOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"Unknown option(s): {', '.join(unknown)}", None,
                             f"Valid options: {', '.join(sorted(known))}")
        return cls(**values)


class _Stages:
    def __init__(self):
        self.rows: list[dict] = []

    @contextmanager
    def stage(self, name: str, notes: str = ""):
        started = time.perf_counter()
        row = {"name": name, "notes": notes}
        yield row
        row["seconds"] = round(time.perf_counter() - started, 2)
        if row.get("cached"):
            row["notes"] += "; served from the step cache"
        self.rows.append(row)


def optimize(model: str | Path, data: str | Path, out: str | Path, options: OptimizeOptions | None = None,
             force: bool = False, cache: StepCache | None = None) -> dict:
    """Run the whole chain on ``model`` and gate on ``data``; returns the report dict.

    ``cache`` (None = no cache) serves the export and quantize steps from a
    :class:`~edgekit.cache.StepCache` when their inputs, options and tool
    versions are unchanged, so a rerun after an interruption redoes only what
    is missing; the report's stages say which were cached.
    """
    options = options or OptimizeOptions()
    options.validate()
    from .hf import fetch

    src = resolve(fetch(model))
    if src.kind != "hf":
        raise ModelError(f"'{model}' is not a Hugging Face model folder", f"it is a {src.kind} artifact",
                         "Pass the fine-tuned model folder (save_pretrained output)")
    ds, labels = labeled_data(src, data, options.text_column, options.label_column, options.max_samples)
    stages, started = _Stages(), time.perf_counter()
    with atomic_dir(out, force) as tmp, _workdir(tmp) as work:
        export_src = src
        if options.prune_ffn or options.prune_layers or options.prune_heads:
            from .prune import prune_stage

            with stages.stage("prune") as row:
                export_src = prune_stage(src, data, work / "pruned", options, row)
        with stages.stage("export", f"opset {options.opset}, validated vs PyTorch") as row:
            fp32, row["cached"] = _export_step(export_src, data, options, work / "fp32", cache)
            row["notes"] += f" (max |diff| {max(fp32.manifest['validation']['max_abs_diff'].values()):.1e})"
        engine = None
        if options.target in ENGINE_TARGETS:
            with stages.stage("quantize+build", f"{options.precision} engine for {options.target}") as row:
                engine = engine_for_target(fp32, tmp, work, options, data, options.calibration_data)
                int8 = _accuracy_artifact(engine, tmp)
                row["notes"] += f", accuracy from {engine.accuracy_onnx.name} on ONNX Runtime"
        else:
            with stages.stage("quantize") as row:
                int8, row["cached"] = _quantize_step(fp32, options, data, work / "int8", cache)
                row["notes"] = f"{int8.manifest['format']}, target {options.target}"
        encoder = encoder_for(src)
        eval_bs = options.eval_batch_size or _gate_batch(options, int8)
        with stages.stage("check", f"{len(labels)} labeled examples, batch {eval_bs}, same tokens for both"):
            ref = evaluate(session_for(src, options.threads, options.task), encoder, ds.texts, eval_bs, ds.pairs)
            got = evaluate(session_for(int8, options.threads), encoder, ds.texts, eval_bs, ds.pairs)
            checked = compare(ref, got, labels)
        bopts = BenchOptions(batch_size=options.batch_size, iterations=options.iterations, warmup=options.warmup,
                             threads=options.threads)
        with stages.stage("bench", f"batch {options.batch_size}, {options.iterations} runs each"):
            base_bench = bench(src, data, bopts, options.text_column)
            shipped = engine.engine if engine else int8
            opt_bench = bench(shipped, data, bopts, options.text_column) if engine is None or gpu_info() else None
        if engine is None:
            _copy_artifact(int8.path, tmp)
        report = _report(src, data, out, options, checked, base_bench, opt_bench, shipped, stages.rows)
        report["seconds_total"] = round(time.perf_counter() - started, 2)
        report["cache"] = {"dir": str(cache.root) if cache else None,
                           "cached_stages": [r["name"] for r in stages.rows if r.get("cached")]}
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(optimize_markdown(report))
        write_manifest(tmp, "onnx", "optimize",
                       inputs={"model": str(src.path), "model_sha256": sha256_folder(src.path), "data": str(data),
                               "data_sha256": sha256_file(Path(data)) if Path(data).is_file() else None},
                       options=asdict(options),
                       extra={"task": int8.manifest.get("task"), "precision": report["optimized"]["precision"],
                              "passed": report["passed"],
                              "eval_batch_size": eval_bs,
                              "input_names": int8.manifest.get("input_names"),
                              "stages": stages.rows,
                              "lineage": [fp32.manifest, int8.manifest] + ([engine.engine.manifest] if engine else []),
                              "seconds": report["seconds_total"]})
    if not report["passed"]:
        raise GateFailedError(f"Accuracy gate failed: drop {report['accuracy_drop'] * 100:.2f} pt > allowed "
                              f"{options.max_accuracy_drop * 100:.2f} pt", f"the artifact is kept in '{out}' marked failed",
                              "Raise --max-accuracy-drop, or pass --validation-data (labeled training rows) so "
                              "the most sensitive layers stay in float")
    return report


@contextmanager
def _workdir(tmp: Path):
    """Scratch space inside OUT's temporary folder: removed with it on failure, before the rename on success."""
    work = tmp / ".work"
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _export_step(src, data, options: OptimizeOptions, scratch: Path, cache: StepCache | None):
    """The validated fp32 export, from ``cache`` when it holds one for the same inputs. Returns (artifact, cached)."""
    eopts = ExportOptions(opset=options.opset, task=options.task, trust_remote_code=options.trust_remote_code)
    if cache is None:
        return export(src.path, scratch, eopts, data=data, text_column=options.text_column), False
    key = cache.key("export", {"model": sha256_folder(src.path), "data": file_digest(data),
                               "text_column": options.text_column}, asdict(eopts))
    with cache.slot("export", key) as slot:
        if slot.hit:
            return resolve(slot.path), True
        return export(src.path, slot.path, eopts, data=data, text_column=options.text_column), False


def _quantize_step(fp32, options: OptimizeOptions, data, scratch: Path, cache: StepCache | None):
    """The int8 model (with per-layer fallback when ``validation_data`` is given), from ``cache`` when it
    holds one for the same ONNX, data and options. Returns (artifact, cached)."""
    qopts = QuantizeOptions(target=options.target, mode=options.mode, per_channel=options.per_channel,
                            calibration_method=options.calibration_method,
                            calibration_samples=options.calibration_samples)
    calibration_data, text_column = options.calibration_data or data, options.text_column
    if options.validation_data:
        from .fallback import FallbackOptions, quantize_with_fallback

        fopts = FallbackOptions(max_accuracy_drop=options.max_accuracy_drop / 2)
        return resolve(quantize_with_fallback(fp32.path, scratch, qopts, fopts, options.validation_data,
                                              calibration_data, text_column, options.label_column).path), False
    if cache is None:
        return quantize(fp32.path, scratch, qopts, calibration_data=calibration_data, text_column=text_column), False
    static = qopts.resolved_mode() == "static"
    key = cache.key("quantize", {"onnx": fp32.manifest.get("files"), "text_column": text_column,
                                 "calibration_data": file_digest(calibration_data) if static else None}, asdict(qopts))
    with cache.slot("quantize", key) as slot:
        if slot.hit:
            return resolve(slot.path), True
        return quantize(fp32.path, slot.path, qopts, calibration_data=calibration_data, text_column=text_column), False


def _copy_artifact(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and f.name != "manifest.json":
            shutil.copyfile(f, dst / f.name)


def _size_mb(art) -> float:
    files = [art.model_file] if art.model_file else [f for f in art.path.iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 1e6


def _row(bench_result: dict | None, accuracy: float, path: str, art, precision: str, backend: str) -> dict:
    """A report row; ``bench_result`` None = latency not measurable here (an engine without a GPU)."""
    if bench_result is None:
        return {"accuracy": accuracy, "latency_ms": None, "latency_note": NO_GPU, "backend": backend,
                "throughput_per_s": None, "cv": None, "noisy": False, "path": path, "precision": precision,
                "size_mb": _size_mb(art)}
    return {"accuracy": accuracy, "latency_ms": bench_result["latency_ms"], "backend": bench_result["backend"],
            "throughput_per_s": bench_result["throughput_per_s"], "cv": bench_result["cv"],
            "noisy": bench_result["noisy"], "path": path, "precision": precision, "size_mb": _size_mb(art),
            "samples_ms": bench_result.get("samples_ms")}


def _gate_batch(options: OptimizeOptions, candidate) -> int:
    """Dynamic int8 scales depend on the batch (padding enters them): gate it at the serving batch size.
    Static scales do not, so other candidates are evaluated in batches of 32 (much faster)."""
    return options.batch_size if candidate.manifest.get("mode") == "dynamic" else 32


def _accuracy_artifact(engine: EngineResult, tmp: Path):
    """The ONNX the engine was built from, kept in OUT beside the engine (its accuracy is the report's)."""
    onnx_path = engine.accuracy_onnx
    if onnx_path.parent != tmp:
        shutil.copyfile(onnx_path, tmp / ONNX_NAME)
        onnx_path = tmp / ONNX_NAME
    return resolve(onnx_path)


def _report(src, data, out, options, checked, base_bench, opt_bench, shipped, stages) -> dict:
    drop = checked["accuracy_drop"]
    base = _row(base_bench, checked["original_accuracy"], str(src.path), src, "fp32", "pytorch")
    engine = options.target in ENGINE_TARGETS
    precision = options.precision if engine else "int8"
    path = Path(out) / (shipped.model_file.name if shipped.model_file else ONNX_NAME)
    opt = _row(opt_bench, checked["candidate_accuracy"], str(path), shipped, precision,
               options.target if engine else "onnxruntime")
    p50_base = base["latency_ms"]["p50"]
    p50_opt = opt["latency_ms"]["p50"] if opt["latency_ms"] else None
    return {
        "passed": drop <= options.max_accuracy_drop + 1e-12,
        "model": str(src.path), "data": str(data), "target": options.target,
        "max_accuracy_drop": options.max_accuracy_drop,
        "accuracy_drop": drop,
        "speedup_p50": p50_base / p50_opt if p50_opt else None,
        "baseline": base, "optimized": opt,
        "check": {k: v for k, v in checked.items()},
        "bench": {"batch_size": options.batch_size, "iterations": options.iterations, "warmup": options.warmup,
                  "threads": base_bench["threads"], "tokens_mean": base_bench["tokens_mean"]},
        "stages": stages,
        "environment": environment(),
    }
