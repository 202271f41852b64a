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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import progress
from .artifact import ONNX_NAME, atomic_dir, resolve, sha256_file, sha256_folder, write_manifest
from .atomic import work_folder
from .bench import bench
from .cache import StepCache, file_digest
from .check import compare, evaluate, gate_reader, labeled_data
from .data import TextDataset, load_dataset
from .environment import gpu_info
from .errors import GateFailedError, InputError, ModelError
from .export import ExportOptions, export
from .memory import check_rows_fit
from .options import DataOptions, GateOptions, OptimizeOptions, same_file
from .quantize import quantize
from .report import optimize_markdown, write_html_for_run, write_json
from .report_schema import optimize_report
from .sessions import encoder_for, session_for
from .targets import ENGINE_TARGETS, EngineResult, engine_for_target

__all__ = ["OptimizeOptions", "DataOptions", "GateOptions", "optimize", "RunData"]

ORIGINAL_EVAL_BATCH = 32   # the fp32 original's accuracy does not depend on its batch; the candidate's may
PAIRED_ROUNDS, PAIRED_RUNS = 20, 5


class _Stages:
    def __init__(self):
        self.rows: list[dict] = []

    @contextmanager
    def stage(self, name: str, notes: str = ""):
        """A report row for the stage, and its start/end lines on stderr (edgekit.progress; --quiet)."""
        from . import progress

        started = time.perf_counter()
        row = {"name": name, "notes": notes}
        with progress.stage(name, notes) as line:
            yield row
            line["note"] = "served from the step cache" if row.get("cached") else None
        row["seconds"] = round(time.perf_counter() - started, 2)
        if row.get("cached"):
            row["notes"] += "; served from the step cache"
        self.rows.append(row)


@dataclass
class RunData:
    """The rows of one run, each file read once: every step receives these objects, never the paths."""

    gate: TextDataset                  # the --data file, all rows (export validation, bench)
    checked: TextDataset               # the gate rows the check uses (--max-samples)
    labels: np.ndarray                 # their labels as the model's class ids
    calibration: TextDataset | None    # static calibration (None: no static calibration possible)
    validation: TextDataset | None     # labeled rows for the per-layer fallback (None: no fallback)
    prune: TextDataset | None          # labeled training rows for pruning


def load_run_data(src, data, options: OptimizeOptions) -> RunData:
    """Read the gate file and the other data files once each (a file named twice is read once)."""
    d = options.data
    cache: dict[str, TextDataset] = {}

    def read(path, labeled: bool, split: str = "validation") -> TextDataset:
        if same_file(path, data):
            return gate
        key = str(path)
        if key not in cache or (labeled and cache[key].labels is None):
            cache[key] = load_dataset(path, d.text_column, d.label_column if labeled else None,
                                      require_labels=labeled, split=split)
        return cache[key]

    engine_int8 = options.target in ENGINE_TARGETS and options.precision == "int8"
    for name in ("validation_data", "calibration_data") if engine_int8 else ("validation_data",):
        if same_file(getattr(d, name), data):  # before anything is read
            flag = f"--{name.replace('_', '-')}"
            raise InputError(f"{flag} is the gate's own data file '{data}'",
                             "the per-layer fallback would be judged on the rows that gate it",
                             f"Pass other labeled rows (e.g. the train split) as {flag}")
    gate = gate_reader(src)(data, d.text_column, d.label_column)  # the task's reader (texts+labels, words+tags)
    checked, labels = labeled_data(src, gate, max_samples=d.max_samples)
    validation_path = d.validation_data or (d.calibration_data if engine_int8 else None)
    calibration_path = d.calibration_data or (d.validation_data if engine_int8 else data)
    validation = read(validation_path, labeled=True) if validation_path else None  # first: it needs the labels
    return RunData(gate=gate, checked=checked, labels=labels, validation=validation,
                   calibration=read(calibration_path, labeled=False) if calibration_path else None,
                   prune=read(d.prune_data, labeled=True, split="train") if options.pruning else None)


def optimize(model: str | Path, data: str | Path, out: str | Path, options: OptimizeOptions | None = None,
             force: bool = False, cache: StepCache | None = None) -> dict:
    """Run the whole chain on ``model`` and gate on ``data``; returns the report dict.

    ``data`` is read once (:func:`load_run_data`); every step receives the
    parsed rows. ``cache`` (None = no cache) serves the export and quantize
    steps from a :class:`~edgekit.cache.StepCache` when their inputs, options
    and tool versions are unchanged, so a rerun after an interruption redoes
    only what is missing; the report's stages say which were cached.
    """
    options = options or OptimizeOptions()
    options.validate()
    with progress.slow_stage("load", f"model {model}, data {data}"):  # shown when loading takes over a second
        from .hf import fetch

        src = resolve(fetch(model))
        if src.kind != "hf":
            raise ModelError(f"'{model}' is not a Hugging Face model folder", f"it is a {src.kind} artifact",
                             "Pass the fine-tuned model folder (save_pretrained output)")
        if options.pruning:  # an impossible cut (every block, every neuron) fails here, not minutes in
            from .prune import check_plan

            check_plan(src.path, options.prune, "--prune-")
        rows = load_run_data(src, data, options)
        _check_batches_fit(src, rows, options)
    stages, started = _Stages(), time.perf_counter()
    with atomic_dir(out, force, inputs=(model, src.path, data)) as tmp, work_folder(tmp) as work:
        export_src = src
        if options.pruning:
            from .prune import prune_stage

            with stages.stage("prune") as row:
                export_src = prune_stage(src, rows.gate, rows.prune, work / "pruned", options.prune, options.bench,
                                         row)
        with stages.stage("export", f"opset {options.export.opset}, validated vs PyTorch") as row:
            fp32, row["cached"] = export_step(export_src, rows.gate, options.export, work / "fp32", cache)
            row["notes"] += f" (max abs diff {max(fp32.manifest['validation']['max_abs_diff'].values()):.1e})"
        engine = None
        if options.target in ENGINE_TARGETS:
            with stages.stage("quantize+build", f"{options.precision} engine for {options.target}") as row:
                engine = engine_for_target(fp32, tmp, work, options, rows.gate, rows.calibration, rows.validation)
                candidate = _accuracy_artifact(engine, tmp)
                row["notes"] += f", accuracy from {engine.accuracy_onnx.name} on ONNX Runtime"
        else:
            with stages.stage("quantize") as row:
                candidate, row["cached"] = _quantize_step(fp32, options, rows, work / "int8", cache)
                row["notes"] = f"{candidate.manifest['format']}, target {options.target}"
        checked, eval_bs = _check(src, candidate, rows, options, stages)
        options, thread_warning = _bench_threads(options)
        with stages.stage("bench", f"batch {options.bench.batch_size}, {options.bench.iterations} runs each"):
            base_bench = bench(src, rows.gate, options.bench)
            shipped = engine.engine if engine else candidate
            measurable = engine is None or gpu_info()
            opt_bench = bench(shipped, rows.gate, options.bench) if measurable else None
        paired = _paired_ratio(src, shipped, rows, options, stages) if measurable else None
        if engine is None:
            _copy_artifact(candidate.path, tmp)
        report = optimize_report(src, data, out, options, checked, base_bench, opt_bench, shipped, stages.rows)
        report["check"]["eval_batch_size"] = eval_bs
        _add_speedup(report, paired, base_bench, opt_bench)
        if thread_warning:
            report["warnings"].insert(0, thread_warning)
        report["seconds_total"] = round(time.perf_counter() - started, 2)
        report["cache"] = {"dir": str(cache.root) if cache else None,
                           "cached_stages": [r["name"] for r in stages.rows if r.get("cached")]}
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(optimize_markdown(report))
        report["html_note"] = write_html_for_run(tmp, source=str(out))
        write_manifest(tmp, "onnx", "optimize",
                       inputs={"model": str(src.path), "model_sha256": sha256_folder(src.path), "data": str(data),
                               "data_sha256": sha256_file(Path(data)) if Path(data).is_file() else None},
                       options=asdict(options),
                       extra={"task": candidate.manifest.get("task"), "precision": report["optimized"]["precision"],
                              "passed": report["passed"], "eval_batch_size": eval_bs,
                              "input_names": candidate.manifest.get("input_names"), "stages": stages.rows,
                              "lineage": _lineage(fp32, candidate, engine),
                              "seconds": report["seconds_total"]})
    if not report["passed"]:
        raise GateFailedError(f"Accuracy gate failed: drop {report['accuracy_drop'] * 100:.2f} pt > allowed "
                              f"{options.gate.max_accuracy_drop * 100:.2f} pt", f"the artifact is kept in '{out}' marked failed",
                              "Raise --max-accuracy-drop, or pass --validation-data (labeled training rows) so "
                              "the most sensitive layers stay in float")
    return report


def _check_batches_fit(src, rows: RunData, options: OptimizeOptions) -> None:
    """The latency and gate batches on the CPU checked against this machine's memory before any step runs (a batch
    past it was killed for lack of memory minutes in, after export and quantize)."""
    if options.target in ENGINE_TARGETS:  # the engine's activations live on the GPU; its ONNX gate is at batch 32
        return
    encoder, texts = encoder_for(src), rows.checked.texts
    check_rows_fit(encoder, texts, options.bench.batch_size, options.bench.seq_len)
    if options.gate.eval_batch_size:
        check_rows_fit(encoder, texts, min(options.gate.eval_batch_size, len(texts)), flag="--eval-batch-size")


def _check(src, candidate, rows: RunData, options: OptimizeOptions, stages: "_Stages") -> tuple[dict, int]:
    """Both models on the same tokens of the gate rows; the candidate at its gate batch (GateOptions.batch_for)."""
    encoder = encoder_for(src)
    eval_bs = options.gate.batch_for(candidate.manifest.get("mode"), options.bench.batch_size)
    threads = options.bench.threads
    with stages.stage("check", f"{len(rows.labels)} labeled examples, original at batch {ORIGINAL_EVAL_BATCH}, "
                               f"candidate at batch {eval_bs}, same tokens for both"):
        texts, pairs = rows.checked.texts, rows.checked.pairs
        # the fp32 original's outputs do not depend on the batch: evaluate it in large batches (fast)
        ref = evaluate(session_for(src, threads, options.export.task), encoder, texts, ORIGINAL_EVAL_BATCH, pairs)
        got = evaluate(session_for(candidate, threads), encoder, texts, eval_bs, pairs)
        return compare(ref, got, rows.labels), eval_bs


def _bench_threads(options: OptimizeOptions) -> tuple[OptimizeOptions, str | None]:
    """Threads for both timings: ``--threads`` as given; by default half the usable cores (at least one), fewer
    only when other processes keep even those busy (said on the final line).

    The speedup depends on the thread count (at batch 1 PyTorch eager barely
    uses a second thread, ONNX Runtime does: on 2 cores MiniLM-L6's ratio is
    ~3.0x at 2 threads, ~2.1x at 1), so the default is one a machine running
    another job of its own size still gives: the same quantity is measured
    quiet or busy. Timing more threads than the free cores makes PyTorch's pool
    thrash (its p50 x2-x3, the ratio swinging by 40 % between runs), so the
    threads drop to the free cores rather than measure the load.
    """
    from .environment import busy_cores, free_threads
    from .runtime.session import default_threads

    if options.bench.threads is not None:
        return options, None
    usable = default_threads()
    planned = max(1, usable // 2)
    busy = busy_cores()
    threads = min(planned, free_threads(usable, busy))
    timed = replace(options, bench=replace(options.bench, threads=threads))
    if threads == planned:
        return timed, None
    progress.echo(f"[edgekit] other processes keep {busy:.1f} of {usable} cores busy: both models timed at "
                  f"{threads} thread(s)")
    warning = (f"busy machine: other processes kept {busy:.1f} of {usable} cores busy at the start of bench; both "
               f"models were timed at {threads} thread(s) instead of {planned} (pass --threads to force)")
    return timed, warning


def _paired_ratio(src, shipped, rows: RunData, options: OptimizeOptions, stages: "_Stages") -> dict:
    """The speedup from interleaved rounds (original, optimized, original, ...) on the same inputs and threads,
    so load from other processes lands on both sides (edgekit.paired)."""
    from .paired import PairedOptions, paired_sessions
    from .runtime.session import default_threads

    b = options.bench
    popts = PairedOptions(batch_size=b.batch_size, rounds=PAIRED_ROUNDS, runs=PAIRED_RUNS, warmup=3,
                          threads=b.threads or default_threads())
    with stages.stage("bench (interleaved)", f"{PAIRED_ROUNDS} rounds x {PAIRED_RUNS} runs, original and optimized "
                                             "taking turns on the same inputs"):
        with session_for(src, popts.threads, options.export.task) as base, \
                session_for(shipped, popts.threads) as opt:
            return paired_sessions({"original": base, "optimized": opt}, encoder_for(src), rows.gate.texts[:256],
                                   popts, baseline="original")


def _add_speedup(report: dict, paired: dict | None, base_bench: dict, opt_bench: dict | None) -> None:
    """``speedup_p50`` from the interleaved rounds (its IQR and an unstable flag beside it); the ratio of the two
    separate benches is kept as ``speedup_p50_separate``. Every warning goes into ``warnings``."""
    warnings = list(dict.fromkeys((base_bench or {}).get("warnings", []) + (opt_bench or {}).get("warnings", [])))
    if paired is not None:
        r = paired["ratios"]["optimized"]
        report["speedup_p50_separate"] = report["speedup_p50"]
        report["speedup_p50"] = r["ratio"]
        report["speedup"] = {"method": "interleaved", "ratio": r["ratio"], "iqr": r["iqr"], "spread": r["spread"],
                             "unstable": r["unstable"], "rounds": len(paired["artifacts"]["original"]["round_p50_ms"]),
                             "p50_ms": {k: a["p50_ms"] for k, a in paired["artifacts"].items()},
                             "load_average": [paired["load_average_before"], paired["load_average_after"]]}
        warnings += paired["warnings"]
    report["warnings"] = list(dict.fromkeys(warnings))


def export_step(src, data: TextDataset, options: ExportOptions, scratch: Path, cache: StepCache | None):
    """The validated fp32 export, from ``cache`` when it holds one for the same inputs. Returns (artifact, cached)."""
    if cache is None:
        return export(src.path, scratch, options, data=data), False
    key = cache.key("export", {"model": sha256_folder(src.path), "data": file_digest(data.source),
                               "text_column": data.text_column}, asdict(options))
    with cache.slot("export", key) as slot:
        if slot.hit:
            return resolve(slot.path), True
        return export(src.path, slot.path, options, data=data), False


def _quantize_step(fp32, options: OptimizeOptions, rows: RunData, scratch: Path, cache: StepCache | None):
    """The int8 model (with per-layer fallback when ``validation_data`` is given), from ``cache`` when it
    holds one for the same ONNX, data and options. Returns (artifact, cached)."""
    qopts = options.quantize_options()
    calibration = rows.calibration
    if rows.validation is not None:
        from .fallback import quantize_with_fallback

        return resolve(quantize_with_fallback(fp32.path, scratch, qopts, fallback_options(options),
                                              rows.validation, calibration).path), False
    if cache is None:
        return quantize(fp32.path, scratch, qopts, calibration_data=calibration), False
    static = qopts.resolved_mode() == "static"
    key = cache.key("quantize", {"onnx": fp32.manifest.get("files"), "text_column": calibration.text_column,
                                 "calibration_data": file_digest(calibration.source) if static else None}, asdict(qopts))
    with cache.slot("quantize", key) as slot:
        if slot.hit:
            return resolve(slot.path), True
        return quantize(fp32.path, slot.path, qopts, calibration_data=calibration), False


def fallback_options(options: OptimizeOptions):
    """The per-layer fallback's options: half the gate's budget (the other half is margin for the gate's data)."""
    from .fallback import FallbackOptions

    return FallbackOptions(max_accuracy_drop=options.gate.max_accuracy_drop / 2)


def _copy_artifact(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and f.name != "manifest.json":
            shutil.copyfile(f, dst / f.name)


def _lineage(fp32, candidate, engine: EngineResult | None) -> list[dict]:
    """Manifests from the export to what ships: fp32, the int8 QDQ with its fallback record, the engine."""
    if engine is None:
        return [fp32.manifest, candidate.manifest]
    return [fp32.manifest, *([engine.quantized.manifest] if engine.quantized else []), engine.engine.manifest]


def _accuracy_artifact(engine: EngineResult, tmp: Path):
    """The ONNX the engine was built from, kept in OUT beside the engine (its accuracy is the report's)."""
    onnx_path = engine.accuracy_onnx
    if onnx_path.parent != tmp:
        shutil.copyfile(onnx_path, tmp / ONNX_NAME)
        onnx_path = tmp / ONNX_NAME
    return resolve(onnx_path)


