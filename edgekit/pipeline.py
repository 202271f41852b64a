"""``optimize``: export -> quantize -> check -> bench the original and the result, with a gate.

Writes OUT atomically: the optimized model with tokenizer/config, report.json,
report.md and manifest.json. A failed accuracy gate keeps the artifact, marks
it failed (report and manifest ``passed: false``) and raises GateFailedError
(exit 3).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .artifact import ONNX_NAME, atomic_dir, resolve, sha256_file, sha256_folder, write_manifest
from .bench import BenchOptions, bench
from .check import compare, evaluate, labeled_data
from .environment import environment
from .errors import GateFailedError, InputError, ModelError
from .export import ExportOptions, export
from .quantize import QuantizeOptions, TARGETS, quantize
from .report import optimize_markdown, write_json
from .sessions import encoder_for, session_for


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

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"Unknown target '{self.target}'", None, f"Choose one of: {', '.join(TARGETS)}")
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
        self.rows.append(row)


def optimize(model: str | Path, data: str | Path, out: str | Path, options: OptimizeOptions | None = None,
             force: bool = False) -> dict:
    """Run the whole chain on ``model`` and gate on ``data``; returns the report dict."""
    options = options or OptimizeOptions()
    options.validate()
    from .hf import fetch

    src = resolve(fetch(model))
    if src.kind != "hf":
        raise ModelError(f"'{model}' is not a Hugging Face model folder", f"it is a {src.kind} artifact",
                         "Pass the fine-tuned model folder (save_pretrained output)")
    ds, labels = labeled_data(src, data, options.text_column, options.label_column, options.max_samples)
    stages, started = _Stages(), time.perf_counter()
    with atomic_dir(out, force) as tmp, tempfile.TemporaryDirectory(prefix="edgekit-opt-", dir=tmp.parent) as work:
        work = Path(work)
        with stages.stage("export", f"opset {options.opset}, validated vs PyTorch") as row:
            fp32 = export(src.path, work / "fp32", ExportOptions(opset=options.opset, task=options.task,
                                                                 trust_remote_code=options.trust_remote_code),
                          data=data, text_column=options.text_column)
            row["notes"] += f" (max |diff| {max(fp32.manifest['validation']['max_abs_diff'].values()):.1e})"
        with stages.stage("quantize") as row:
            qopts = QuantizeOptions(target=options.target, mode=options.mode, per_channel=options.per_channel,
                                    calibration_method=options.calibration_method,
                                    calibration_samples=options.calibration_samples)
            int8 = quantize(fp32.path, work / "int8", qopts, calibration_data=options.calibration_data or data,
                            text_column=options.text_column)
            row["notes"] = f"{int8.manifest['format']}, target {options.target}"
        encoder = encoder_for(src)
        eval_bs = options.eval_batch_size or options.batch_size
        with stages.stage("check", f"{len(labels)} labeled examples, batch {eval_bs}, same tokens for both"):
            ref = evaluate(session_for(src, options.threads, options.task), encoder, ds.texts, eval_bs, ds.pairs)
            got = evaluate(session_for(int8, options.threads), encoder, ds.texts, eval_bs, ds.pairs)
            checked = compare(ref, got, labels)
        bopts = BenchOptions(batch_size=options.batch_size, iterations=options.iterations, warmup=options.warmup,
                             threads=options.threads)
        with stages.stage("bench", f"batch {options.batch_size}, {options.iterations} runs each"):
            base_bench = bench(src, data, bopts, options.text_column)
            opt_bench = bench(int8, data, bopts, options.text_column)
        _copy_artifact(int8.path, tmp)
        report = _report(src, data, out, options, checked, base_bench, opt_bench, int8, stages.rows)
        report["seconds_total"] = round(time.perf_counter() - started, 2)
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(optimize_markdown(report))
        write_manifest(tmp, "onnx", "optimize",
                       inputs={"model": str(src.path), "model_sha256": sha256_folder(src.path), "data": str(data),
                               "data_sha256": sha256_file(Path(data)) if Path(data).is_file() else None},
                       options=asdict(options),
                       extra={"task": int8.manifest.get("task"), "precision": "int8", "passed": report["passed"],
                              "eval_batch_size": eval_bs,
                              "input_names": int8.manifest.get("input_names"),
                              "stages": stages.rows, "lineage": [fp32.manifest, int8.manifest],
                              "seconds": report["seconds_total"]})
    if not report["passed"]:
        raise GateFailedError(f"Accuracy gate failed: drop {report['accuracy_drop'] * 100:.2f} pt > allowed "
                              f"{options.max_accuracy_drop * 100:.2f} pt", f"the artifact is kept in '{out}' marked failed",
                              "Raise --max-accuracy-drop, use --mode static with calibration data, or keep fp32")
    return report


def _copy_artifact(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and f.name != "manifest.json":
            shutil.copyfile(f, dst / f.name)


def _size_mb(art) -> float:
    files = [art.model_file] if art.model_file else [f for f in art.path.iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 1e6


def _row(bench_result: dict, accuracy: float, path: str, art, precision: str) -> dict:
    return {"accuracy": accuracy, "latency_ms": bench_result["latency_ms"], "backend": bench_result["backend"],
            "throughput_per_s": bench_result["throughput_per_s"], "cv": bench_result["cv"],
            "noisy": bench_result["noisy"], "path": path, "precision": precision, "size_mb": _size_mb(art)}


def _report(src, data, out, options, checked, base_bench, opt_bench, int8, stages) -> dict:
    drop = checked["accuracy_drop"]
    base = _row(base_bench, checked["original_accuracy"], str(src.path), src, "fp32")
    opt = _row(opt_bench, checked["candidate_accuracy"], str(Path(out) / ONNX_NAME), int8, "int8")
    p50_base, p50_opt = base["latency_ms"]["p50"], opt["latency_ms"]["p50"]
    return {
        "passed": drop <= options.max_accuracy_drop + 1e-12,
        "model": str(src.path), "data": str(data), "target": options.target,
        "max_accuracy_drop": options.max_accuracy_drop,
        "accuracy_drop": drop,
        "speedup_p50": p50_base / p50_opt if p50_opt else None,
        "baseline": base, "optimized": opt,
        "check": {k: v for k, v in checked.items()},
        "bench": {"batch_size": options.batch_size, "iterations": options.iterations, "warmup": options.warmup,
                  "threads": base_bench["threads"], "tokens_mean": opt_bench["tokens_mean"]},
        "stages": stages,
        "environment": environment(),
    }
