"""Latency and throughput of any artifact over real sentences (model-only: tokenization excluded)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .artifact import Artifact, resolve
from .data import load_dataset
from .environment import environment
from .errors import InputError
from .export import BUILTIN_SENTENCES
from .runtime.session import default_threads
from .sessions import encoder_for, session_for

HIGH_CV = 0.10  # a coefficient of variation above this marks a noisy run


@dataclass
class BenchOptions:
    """Options of ``bench``; CLI flags and recipe keys share these names."""

    batch_size: int = 1
    seq_len: int | None = None      # None = each batch padded to its longest real sentence
    warmup: int = 20
    iterations: int = 200
    min_seconds: float = 0.0        # keep iterating until both counts and seconds are reached
    threads: int | None = None      # None = one per usable core, the same for every backend
    samples: int = 512              # sentences drawn from the data (seeded)

    def validate(self) -> None:
        for name in ("batch_size", "iterations", "samples"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1", f"got {getattr(self, name)}", None)
        if self.warmup < 0 or (self.seq_len is not None and self.seq_len < 2):
            raise InputError("Invalid --warmup or --seq-len", f"got {self.warmup}, {self.seq_len}",
                             "Use --warmup >= 0 and --seq-len >= 2")


def bench(artifact: str | Path | Artifact, data: str | Path | None = None, options: BenchOptions | None = None,
          text_column: str | None = None, encoder_from: str | Path | None = None) -> dict:
    """Time ``session.run`` on pre-tokenized batches of real sentences; returns latency stats in ms."""
    options = options or BenchOptions()
    options.validate()
    art = artifact if isinstance(artifact, Artifact) else resolve(artifact)
    texts = _texts(data, text_column, options.samples)
    encoder = encoder_for(resolve(encoder_from) if encoder_from else art)
    threads = options.threads or default_threads()
    size = options.batch_size
    texts = texts * -(-size // len(texts))  # at least one full batch
    batches = [encoder(texts[i:i + size], pad_to=options.seq_len) for i in range(0, len(texts) - size + 1, size)]
    with session_for(art, threads) as session:
        batches = [session.feeds(b) for b in batches]
        for i in range(options.warmup):
            session.run(batches[i % len(batches)])
        times = _timed_loop(session, batches, options)
    return {"artifact": str(art.path), "backend": session.backend, "threads": threads,
            "options": asdict(options), "tokens_mean": float(np.mean([b["input_ids"].shape[1] for b in batches])),
            **summarize(times, options.batch_size), "environment": environment()}


def _timed_loop(session, batches, options: BenchOptions) -> list[float]:
    times: list[float] = []
    started = time.perf_counter()
    i = 0
    while i < options.iterations or time.perf_counter() - started < options.min_seconds:
        feeds = batches[i % len(batches)]
        t0 = time.perf_counter()
        session.run(feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
        i += 1
    return times


def summarize(times_ms: list[float], batch_size: int) -> dict:
    arr = np.asarray(times_ms)
    mean = float(arr.mean())
    stdev = float(statistics.stdev(times_ms)) if len(times_ms) > 1 else 0.0
    cv = stdev / mean if mean else 0.0
    return {
        "iterations": len(times_ms),
        "latency_ms": {"p50": _pct(arr, 50), "p90": _pct(arr, 90), "p95": _pct(arr, 95), "p99": _pct(arr, 99),
                       "mean": mean, "stdev": stdev, "min": float(arr.min()), "max": float(arr.max())},
        "cv": cv,
        "noisy": cv > HIGH_CV,
        "throughput_per_s": 1000.0 * batch_size / mean if mean else 0.0,
    }


def _pct(arr: np.ndarray, q: float) -> float:
    return float(np.percentile(arr, q))


def _texts(data, text_column, samples: int) -> list[str]:
    if data is None:
        return list(BUILTIN_SENTENCES)
    return load_dataset(data, text_column=text_column, require_labels=False).subset(samples).texts
