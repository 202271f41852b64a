"""Latency and throughput of any artifact over real sentences, by the conventions in the README.

Warm-up runs until both a count and a duration are reached, then timed runs
until both a count and a duration are reached (trtexec's 200 ms / 3 s,
optimum-benchmark's >= 10 runs). Model-only mode times ``session.run`` on
pre-tokenized inputs; end-to-end mode times the shipped runtime's
``edgekit.runtime.load(...).predict`` (tokenization, model, softmax). A session
that offers ``run_timed(feeds) -> (outputs, gpu_compute_ms)`` (CUDA events
around the enqueue, copies excluded) also gets GPU-compute percentiles beside
the host-side end-to-end ones. Every result carries its environment and its
warnings (noisy run, busy machine, too few runs for a p99).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import progress
from .artifact import Artifact, resolve
from .data import load_dataset
from .schema import opt
from .environment import environment, load_average
from .errors import InputError
from .export import BUILTIN_SENTENCES
from .memory import check_rows_fit
from .runtime.session import check_threads, default_threads
from .runtime.tokenizer import TextEncoder
from .sessions import encoder_for, session_for

SCHEMA = "edgekit.bench/1"
HIGH_CV = 0.10       # a coefficient of variation above this marks a noisy run
MIN_RUNS_FOR_P99 = 100
MIN_RUNS = 10            # below this a p50 is a few samples' middle and a CV of one run is 0 %


@dataclass
class BenchOptions:
    """Options of ``bench``; CLI flags and recipe keys share these names. Both minimums of a pair must be met."""

    batch_size: int = opt(1, help="Latency batch size.")
    seq_len: int | None = opt(None, help="Tokens per input: real text cut to this length (default: real sentences "
                                         "padded to the batch's longest).")
    warmup: int = opt(10, help="Untimed runs first, at least this many...")
    warmup_seconds: float = opt(0.2, help="...and for at least this long (seconds).")
    iterations: int = opt(100, help="Timed runs, at least this many...")
    min_seconds: float = opt(3.0, help="...and for at least this long (seconds).")
    threads: int | None = opt(None, help="Intra-op threads, the same for every backend and for the accuracy check "
                                         "(default: one per usable core).")
    samples: int = opt(512, help="Sentences drawn from the data to time on (seeded).", flag="bench-samples")
    end_to_end: bool = opt(False, help="Time runtime.load(...).predict(texts): tokenization included.")

    def validate(self) -> None:
        for name in ("batch_size", "iterations", "samples"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1", f"got {getattr(self, name)}", None)
        if not (self.warmup >= 0 and 0 <= self.warmup_seconds < float("inf") and 0 <= self.min_seconds < float("inf")):
            raise InputError("--warmup, --warmup-seconds and --min-seconds must be >= 0",
                             f"got {self.warmup}, {self.warmup_seconds}, {self.min_seconds}", None)
        check_shape_and_threads(self.seq_len, self.threads)


def check_shape_and_threads(seq_len: int | None, threads: int | None) -> None:
    """--seq-len and --threads as one-artifact and interleaved bench both take them (None = real lengths, cores)."""
    if seq_len is not None and seq_len < 2:
        raise InputError(f"--seq-len must be at least 2, got {seq_len}", None,
                         "Room is needed for the special tokens ([CLS] ... [SEP])")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}", None, "Omit it to use every usable core")
    check_threads(threads, "--threads")


def bench(artifact: str | Path | Artifact, data: str | Path | None = None, options: BenchOptions | None = None,
          text_column: str | None = None, encoder_from: str | Path | None = None) -> dict:
    """One measurement of ``artifact``: latency stats in ms, throughput, raw samples, warnings, environment."""
    options = options or BenchOptions()
    head, points = _run(artifact, data, [options], text_column, encoder_from)
    result = {**head, **points[0], "options": asdict(options), "warnings": head["warnings"] + points[0]["warnings"]}
    result["environment"] = environment(threads=result["threads"])
    return result


def sweep(artifact: str | Path | Artifact, data: str | Path | None = None, batch_sizes: list[int] | None = None,
          seq_lens: list[int | None] | None = None, options: BenchOptions | None = None,
          text_column: str | None = None, encoder_from: str | Path | None = None) -> dict:
    """A batch-size x sequence-length grid on one open session; ``None`` in ``seq_lens`` = real sentence lengths."""
    options = options or BenchOptions()
    grid = [replace(options, batch_size=b, seq_len=s) for b in (batch_sizes or [options.batch_size])
            for s in (seq_lens or [options.seq_len])]
    head, points = _run(artifact, data, grid, text_column, encoder_from)
    warnings = head["warnings"] + [f"batch {p['batch_size']} seq {p['seq_len'] or 'real'}: {w}"
                                   for p in points for w in p["warnings"]]
    return {**head, "kind": "sweep", "options": asdict(options), "points": points, "warnings": warnings,
            "environment": environment(threads=head["threads"])}


def _run(artifact, data, grid: list[BenchOptions], text_column, encoder_from) -> tuple[dict, list[dict]]:
    for options in grid:
        options.validate()
    first = grid[0]
    art = artifact if isinstance(artifact, Artifact) else resolve(artifact)
    texts = _texts(data, text_column, first.samples)
    encoder = encoder_for(resolve(encoder_from) if encoder_from else art)
    for options in grid:
        if options.seq_len and options.seq_len > encoder.max_length:
            raise InputError(f"--seq-len {options.seq_len} is longer than the model takes",
                             f"its limit is {encoder.max_length} tokens", f"Use --seq-len <= {encoder.max_length}")
    if art.kind != "engine":  # a CPU backend: a batch past this machine's memory is refused, not OOM-killed
        for options in grid:
            check_rows_fit(encoder, texts, options.batch_size, options.seq_len)
    by_len = {s: texts_of_length(encoder, texts, s) for s in {o.seq_len for o in grid} if s}
    threads = first.threads or default_threads()
    load_before = load_average()
    with _target(art, first.end_to_end, threads) as (target, backend):
        points = [measure_point(target, encoder, by_len.get(o.seq_len, texts), o) for o in grid]
    head = {"schema": SCHEMA, "kind": "bench", "artifact": str(art.path), "backend": backend,
            "mode": "end-to-end" if first.end_to_end else "model-only", "threads": threads,
            "data": str(data) if data is not None else "built-in sentences", "load_average_before": load_before,
            "warnings": _run_warnings(load_before, threads)}
    return head, points


@contextlib.contextmanager
def _target(art: Artifact, end_to_end: bool, threads: int) -> Iterator[tuple[object, str]]:
    """An open session (model-only) or the shipped runtime's classifier (end-to-end), and its backend name."""
    if not end_to_end:
        with session_for(art, threads) as session:
            yield session, session.backend
        return
    if art.kind == "hf":
        raise InputError(f"--end-to-end times the shipped runtime, which cannot load '{art.path}'",
                         "it is a PyTorch folder; edgekit.runtime.load takes ONNX or engine artifacts",
                         "Export or optimize it first, or drop --end-to-end for a model-only PyTorch baseline")
    from .artifact import ENGINE_SUFFIXES, ONNX_NAME
    from .runtime import load

    path = Path(art.path)
    loads = path.name == ONNX_NAME or (path.suffix in ENGINE_SUFFIXES and not (art.folder / ONNX_NAME).is_file())
    if path.is_file() and not loads:  # load() would time the folder's model.onnx, not the file named
        raise InputError(f"--end-to-end times what edgekit.runtime.load runs from '{art.folder}', not '{path.name}'",
                         f"load() takes a folder and runs its {ONNX_NAME} (else its engine)",
                         "Give it a folder of its own (with the tokenizer and config"
                         f"{'' if path.suffix in ENGINE_SUFFIXES else f', as {ONNX_NAME}'}), or drop --end-to-end "
                         "to time it model-only")
    clf = load(art.folder, threads=threads)  # backend 'auto': ONNX Runtime or the engine's recorded backend
    try:
        yield clf, clf.session.backend
    finally:
        clf.session.close()


def measure_point(target, encoder: TextEncoder, texts: list[str], options: BenchOptions) -> dict:
    """Time an open session (model-only) or runtime classifier (``options.end_to_end``) on batches of ``texts``.

    With ``options.seq_len`` set, pass texts already cut to it (``texts_of_length``).
    """
    size = options.batch_size
    texts = texts * -(-size // len(texts))  # at least one full batch
    text_batches = [texts[i:i + size] for i in range(0, len(texts) - size + 1, size)]
    lengths = [options.seq_len or max(encoder.token_lengths(b)) for b in text_batches]
    if options.end_to_end:
        inputs: list = text_batches

        def run(batch) -> None:
            target.predict(batch, batch_size=size)
    else:
        inputs = [target.feeds(encoder(b, pad_to=options.seq_len)) for b in text_batches]
        run = _model_only_call(target)
    measured = measure(run, inputs, options)
    measured["warnings"] = _point_warnings(measured)
    return {"batch_size": size, "seq_len": options.seq_len, "tokens_mean": float(np.mean(lengths)), **measured}


def _model_only_call(session) -> Callable[[dict], float | None]:
    """``session.run``, or ``session.run_timed`` when the session reports GPU compute time (ms)."""
    timed = getattr(session, "run_timed", None)
    if callable(timed):
        return lambda feeds: float(timed(feeds)[1])

    def run(feeds) -> None:
        session.run(feeds)
    return run


def measure(run: Callable[[object], float | None], inputs: list, options: BenchOptions) -> dict:
    """Warm up, then time ``run`` over ``inputs`` (cycled) until both minimums are met; summary + raw samples.

    ``run`` may return a device-side time in ms (CUDA events); those become ``gpu_compute_ms``.
    """
    started, warm = time.perf_counter(), 0
    while warm < options.warmup or time.perf_counter() - started < options.warmup_seconds:
        run(inputs[warm % len(inputs)])
        warm += 1
    warm_seconds = time.perf_counter() - started
    times, device = [], []
    started, i = time.perf_counter(), 0
    with progress.Counter(options.iterations, desc="timed runs", unit="run") as counter:
        while i < options.iterations or time.perf_counter() - started < options.min_seconds:
            t0 = time.perf_counter()
            gpu = run(inputs[i % len(inputs)])
            times.append((time.perf_counter() - t0) * 1000.0)
            if gpu is not None:
                device.append(gpu)
            i += 1
            counter.update()
    result = {"warmup_runs": warm, "warmup_seconds": round(warm_seconds, 3),
              "seconds": round(time.perf_counter() - started, 3), **summarize(times, options.batch_size),
              "gpu_compute_ms": _stats(device) if device else None,
              "timer": "perf_counter + cuda events" if device else "perf_counter",
              "samples_ms": [round(t, 4) for t in times], "warnings": []}
    return result


def summarize(times_ms: list[float], batch_size: int, cv_threshold: float = HIGH_CV) -> dict:
    """Percentiles, mean, stdev, CV (noisy above ``cv_threshold``) and throughput of per-run times in ms."""
    stats = _stats(times_ms)
    cv = stats["stdev"] / stats["mean"] if stats["mean"] else 0.0
    return {
        "iterations": len(times_ms),
        "latency_ms": stats,
        "cv": cv,
        "cv_threshold": cv_threshold,
        "noisy": cv > cv_threshold,
        "throughput_per_s": 1000.0 * batch_size / stats["mean"] if stats["mean"] else 0.0,
    }


def _stats(times_ms: list[float]) -> dict:
    arr = np.asarray(times_ms, dtype=np.float64)
    return {"p50": _pct(arr, 50), "p90": _pct(arr, 90), "p95": _pct(arr, 95), "p99": _pct(arr, 99),
            "mean": float(arr.mean()), "stdev": float(statistics.stdev(times_ms)) if len(times_ms) > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max())}


def _pct(arr: np.ndarray, q: float) -> float:
    return float(np.percentile(arr, q))


def noisy_warning(result: dict) -> str | None:
    """The warning a noisy measurement carries, or None."""
    if not result.get("noisy"):
        return None
    return (f"noisy run: CV {result['cv']:.0%} is above {result.get('cv_threshold', HIGH_CV):.0%}; "
            "rerun on a quiet machine before trusting these figures")


def _point_warnings(point: dict) -> list[str]:
    found = [w for w in (noisy_warning(point),) if w]
    if point["iterations"] < MIN_RUNS:
        n = point["iterations"]
        found.append(f"only {n} timed run{'' if n == 1 else 's'}: p50, stdev and CV need >= {MIN_RUNS} to mean "
                     "anything; rerun with more --iterations")
    elif point["iterations"] < MIN_RUNS_FOR_P99:
        found.append(f"only {point['iterations']} timed runs: p99 needs >= {MIN_RUNS_FOR_P99} to differ from the max")
    return found


def _run_warnings(load_before: float | None, threads: int) -> list[str]:
    found, cores = [], _usable_cores()
    if load_before is not None and load_before > cores:
        found.append(f"busy machine: 1-minute load average {load_before:.1f} on {cores} usable cores before the run")
    if threads > cores:
        found.append(f"{threads} threads on {cores} usable cores: threads compete for cores")
    return found


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def texts_of_length(encoder: TextEncoder, texts: list[str], seq_len: int) -> list[str]:
    """Real text of (nearly) ``seq_len`` tokens each: consecutive sentences joined, then cut at a word boundary.

    The cut keeps the longest word prefix whose encoding (special tokens included)
    fits ``seq_len``, so model-only inputs hold real tokens, not padding, and the
    end-to-end runtime tokenizes the same text.
    """
    words_all = " ".join(texts).split()
    out = []
    for start in range(len(texts)):
        words, j = [], start
        while encoder.token_lengths([" ".join(words)])[0] < seq_len and j < start + len(texts):
            words += texts[j % len(texts)].split()
            j += 1
        if encoder.token_lengths([" ".join(words)])[0] < seq_len:  # all the data is shorter: repeat it
            words = (words_all * (seq_len // max(len(words_all), 1) + 1))
        lo, hi = 1, len(words)  # largest n with tokens(words[:n]) <= seq_len
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if encoder.token_lengths([" ".join(words[:mid])])[0] <= seq_len:
                lo = mid
            else:
                hi = mid - 1
        out.append(" ".join(words[:lo]))
    return out


def _texts(data, text_column, samples: int) -> list[str]:
    if data is None:
        return list(BUILTIN_SENTENCES)
    return load_dataset(data, text_column=text_column, require_labels=False).subset(samples).texts


def format_bench(result: dict) -> str:
    """The human summary of a ``bench`` or ``sweep`` result; warnings last, never dropped."""
    head = (f"{result['backend']} ({result['mode']}), {result['threads']} threads, "
            f"{Path(result['artifact']).name}")
    if result.get("kind") == "sweep":
        lines = [head, f"{'batch':>5} {'seq':>5} {'runs':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8} "
                       f"{'CV':>5} {'items/s':>9}"]
        for p in result["points"]:
            lat = p["latency_ms"]
            lines.append(f"{p['batch_size']:>5} {p['seq_len'] or 'real':>5} {p['iterations']:>5} {lat['p50']:>8.2f} "
                         f"{lat['p90']:>8.2f} {lat['p99']:>8.2f} {lat['mean']:>8.2f} {p['cv']:>5.0%} "
                         f"{p['throughput_per_s']:>9.1f}")
        lines.append("(latencies in ms)")
    else:
        lat, seq = result["latency_ms"], result["seq_len"] or f"real (mean {result['tokens_mean']:.0f} tokens)"
        lines = [f"{head}: batch {result['batch_size']}, seq {seq}, {result['iterations']} runs in "
                 f"{result['seconds']:.1f} s after {result['warmup_runs']} warm-up",
                 f"  p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f}, p95 {lat['p95']:.2f}, p99 {lat['p99']:.2f}, "
                 f"mean {lat['mean']:.2f} ± {lat['stdev']:.2f} (CV {result['cv']:.0%}), "
                 f"{result['throughput_per_s']:.1f} items/s"]
        gpu = result.get("gpu_compute_ms")
        if gpu:
            lines.append(f"  GPU compute (CUDA events): p50 {gpu['p50']:.3f} ms, p99 {gpu['p99']:.3f}, "
                         f"mean {gpu['mean']:.3f}")
    lines += [f"WARNING: {w}" for w in result["warnings"]]
    return "\n".join(lines)
