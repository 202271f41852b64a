"""One ``report.json`` schema for ``optimize`` with and without ``--search`` (documented in bench/README.md).

Top-level fields every report has (:data:`TOP_LEVEL`): ``schema``, ``kind``
("optimize" or "search"), ``passed``, ``model``, ``data``, ``target``,
``max_accuracy_drop``, ``accuracy_drop``, ``speedup_p50``, ``baseline`` and
``optimized`` (rows of :data:`ROW_FIELDS`), ``check``, ``bench``, ``stages``,
``environment``. A search adds its own ``search`` section. :func:`read_report`
is the one reader.
"""

from __future__ import annotations

import json
from pathlib import Path

from .artifact import ONNX_NAME
from .environment import environment
from .errors import InputError, first_line

SCHEMA = "edgekit.optimize/1"
TOP_LEVEL = ("schema", "kind", "passed", "model", "data", "target", "max_accuracy_drop", "accuracy_drop",
             "speedup_p50", "baseline", "optimized", "check", "bench", "stages", "environment")
ROW_FIELDS = ("accuracy", "latency_ms", "backend", "throughput_per_s", "cv", "noisy", "path", "precision", "size_mb")
NO_GPU = "not measured (no GPU)"


def size_mb(art) -> float:
    files = [art.model_file] if art.model_file else [f for f in art.path.iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 1e6


def row(bench_result: dict | None, accuracy: float, path: str, art, precision: str, backend: str) -> dict:
    """A baseline/optimized row; ``bench_result`` None = latency not measurable here (an engine without a GPU)."""
    if bench_result is None:
        return {"accuracy": accuracy, "latency_ms": None, "latency_note": NO_GPU, "backend": backend,
                "throughput_per_s": None, "cv": None, "noisy": False, "path": path, "precision": precision,
                "size_mb": size_mb(art)}
    return {"accuracy": accuracy, "latency_ms": bench_result["latency_ms"], "backend": bench_result["backend"],
            "throughput_per_s": bench_result["throughput_per_s"], "cv": bench_result["cv"],
            "noisy": bench_result["noisy"], "path": path, "precision": precision, "size_mb": size_mb(art),
            "samples_ms": bench_result.get("samples_ms")}


def optimize_report(src, data, out, options, checked, base_bench, opt_bench, shipped, stages) -> dict:
    """report.json of a plain ``optimize`` run."""
    from .options import ENGINE_TARGETS

    drop = checked["accuracy_drop"]
    base = row(base_bench, checked["original_accuracy"], str(src.path), src, "fp32", "pytorch")
    engine = options.target in ENGINE_TARGETS
    precision = options.precision if engine else "int8"
    path = Path(out) / (shipped.model_file.name if shipped.model_file else ONNX_NAME)
    opt = row(opt_bench, checked["candidate_accuracy"], str(path), shipped, precision,
              options.target if engine else "onnxruntime")
    p50_base = base["latency_ms"]["p50"]
    p50_opt = opt["latency_ms"]["p50"] if opt["latency_ms"] else None
    b = options.bench
    return {
        "schema": SCHEMA, "kind": "optimize",
        "passed": drop <= options.gate.max_accuracy_drop + 1e-12,
        "model": str(src.path), "data": str(data), "target": options.target,
        "max_accuracy_drop": options.gate.max_accuracy_drop,
        "accuracy_drop": drop,
        "speedup_p50": p50_base / p50_opt if p50_opt else None,
        "baseline": base, "optimized": opt,
        "check": dict(checked),
        "bench": {"batch_size": b.batch_size, "iterations": b.iterations, "min_seconds": b.min_seconds,
                  "warmup": b.warmup, "threads": base_bench["threads"], "tokens_mean": base_bench["tokens_mean"]},
        "stages": stages,
        "environment": environment(threads=base_bench["threads"]),  # the threads both models were timed at
    }


def read_report(path: str | Path) -> dict:
    """report.json of an ``optimize`` (plain or ``--search``) OUT folder, or the file itself, checked."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"Report '{file}' cannot be read", first_line(exc),
                         "Pass an optimize --out folder or its report.json") from None
    missing = [k for k in TOP_LEVEL if k not in report]
    if missing or report.get("schema") != SCHEMA:
        raise InputError(f"'{file}' is not an {SCHEMA} report", f"missing: {', '.join(missing) or 'none'}; schema "
                         f"{report.get('schema')!r}", "Rerun optimize with this edgekit version")
    for side in ("baseline", "optimized"):
        if report[side] is not None:
            absent = [k for k in ROW_FIELDS if k not in report[side]]
            if absent:
                raise InputError(f"'{file}': the {side} row lacks {', '.join(absent)}", None, None)
    return report
