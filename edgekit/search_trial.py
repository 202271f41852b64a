"""One trial of ``edgekit.search``: make a candidate from the fp32 ONNX, then measure accuracy and latency.

A trial reads only the files its :class:`TrialSetup` names and writes only
under its own scratch folder, so the same function runs in the search's
process (local loop) or as a Ray task on any node (:func:`ray_trial`, which
receives the fp32 model and the data files as bytes and ships the candidate's
files back: no shared filesystem is assumed).

Accuracy is measured on the gate data with :func:`edgekit.check.evaluate`:
at batch 1 on the ``cpu`` target (the latency batch; dynamic int8 scales
depend on padding, so its gate must use the serving batch), at
``eval_batch_size`` for TensorRT targets, whose fp16 / QDQ graphs run here on
ONNX Runtime's CPU provider for accuracy only. Latency (p50, batch 1, real
sentences) is measured with :func:`edgekit.bench.measure` on ONNX Runtime CPU
for the ``cpu`` target only: a TensorRT engine's latency cannot be measured on
a CPU, and the CPU time of its ONNX says nothing about it.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .artifact import atomic_dir, copy_tokenizer_and_config, resolve, sha256_file, write_manifest
from .atomic import discard, temp_sibling
from .bench import BenchOptions, measure
from .check import evaluate, gate_metric, labeled_data
from .data import TextDataset
from .errors import EdgekitError
from .runtime.session import OrtSession
from .runtime.tokenizer import TextEncoder

LATENCY_SENTENCES = 128  # gate sentences cycled through by the latency measurement


@dataclass(frozen=True)
class Candidate:
    """One point of the search space; ``None`` fields do not apply to its precision or mode."""

    precision: str = "int8"                   # fp32 (the baseline), fp16 (TensorRT targets), int8
    mode: str | None = None                   # int8: dynamic or static
    calibration_method: str | None = None     # int8 static: minmax, entropy, percentile
    calibration_samples: int | None = None    # int8 static
    per_channel: bool | None = None           # int8: weight scales per output channel
    fallback_budget: float | None = None      # int8: per-layer fallback budget on the validation split; None = off
    prune_ffn: float = 0.0                    # share of FFN neurons pruned first (edgekit.prune); 0 = unpruned
    prune_layers: int = 0                     # transformer blocks pruned first

    @property
    def prune_tag(self) -> str:
        """'' for the unpruned model, else e.g. 'ffn0.5-l2': the pruned source this candidate starts from."""
        return "-".join(([f"ffn{self.prune_ffn:g}"] if self.prune_ffn else [])
                        + ([f"l{self.prune_layers}"] if self.prune_layers else []))

    @property
    def id(self) -> str:
        prefix = f"{self.prune_tag}-" if self.prune_tag else ""
        if self.precision != "int8":
            return prefix + self.precision
        parts = [prefix + "int8", self.mode or "default"]
        if self.mode == "static":
            parts.append(f"{self.calibration_method}{self.calibration_samples}")
        parts.append("pc" if self.per_channel else "pt")
        if self.fallback_budget is not None:
            parts.append(f"fb{self.fallback_budget:g}")
        return "-".join(parts)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares: the fp32 ONNX (exported once), the rows (each file read once by the search,
    columns included; a Ray task receives them pickled) and the measurement settings."""

    source: str                        # the fp32 ONNX artifact folder
    gate: TextDataset                  # labeled rows the accuracy (and the budget) is judged on
    calibration: TextDataset           # sentences for static calibration and fallback sensitivity
    validation: TextDataset            # labeled rows the per-layer fallback judges on
    target: str = "cpu"
    max_samples: int | None = None     # gate examples (None = all)
    eval_batch_size: int = 32          # TensorRT targets; the cpu target gates at batch 1
    validation_samples: int = 400
    latency_iterations: int = 100
    latency_seconds: float = 1.0
    threads: int = 1


def run_trial(candidate: Candidate, setup: TrialSetup, scratch: Path) -> dict:
    """Make ``candidate`` under ``scratch`` and measure it; failures are recorded, not raised (Ctrl-C still is)."""
    started = time.perf_counter()
    record = {"id": candidate.id, "candidate": asdict(candidate),
              "worker": {"pid": os.getpid(), "host": platform.node()}}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram calibrators print progress
            folder = make_candidate(candidate, setup, scratch / candidate.id)
        record.update(measure_candidate(folder, setup))
        record["status"] = "ok"
    except Exception as exc:  # a candidate the tools cannot make or run is a result of the search, not its end
        record = failed(candidate, exc) | {"worker": record["worker"]}
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def failed(candidate: Candidate, exc: Exception) -> dict:
    """The record of a candidate that could not be made or measured: its error on one line."""
    message = exc.message if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc}"
    return {"id": candidate.id, "candidate": asdict(candidate), "status": "failed",
            "error": " ".join(message.split())[:300], "seconds": 0.0}


def make_candidate(candidate: Candidate, setup: TrialSetup, dest: Path) -> Path:
    """The candidate's artifact folder: the fp32 source itself, its fp16 conversion, or an int8 quantization."""
    if candidate.precision == "fp32":
        return Path(setup.source)
    if candidate.precision == "fp16":
        return _fp16(Path(setup.source), dest)
    from .quantize import QuantizeOptions, quantize

    qopts = QuantizeOptions(target=setup.target, mode=candidate.mode,
                            calibration_method=candidate.calibration_method or "minmax",
                            calibration_samples=candidate.calibration_samples or 128,
                            per_channel=bool(candidate.per_channel))
    calibration = setup.calibration if qopts.resolved_mode() == "static" else None
    if candidate.fallback_budget is None:
        return quantize(setup.source, dest, qopts, calibration_data=calibration).path
    from .fallback import FallbackOptions, quantize_with_fallback

    fopts = FallbackOptions(max_accuracy_drop=candidate.fallback_budget, validation_samples=setup.validation_samples)
    return quantize_with_fallback(setup.source, dest, qopts, fopts, validation_data=setup.validation,
                                  calibration_data=setup.calibration).path


def _fp16(source: Path, dest: Path) -> Path:
    from .precision import to_fp16

    src = resolve(source)
    with atomic_dir(dest) as tmp:
        info = to_fp16(src.model_file, tmp / src.model_file.name)
        copy_tokenizer_and_config(src.folder, tmp)
        write_manifest(tmp, "onnx", "fp16", inputs={"onnx": str(src.model_file),
                                                    "onnx_sha256": sha256_file(src.model_file)},
                       options={"keep_io_types": True},
                       extra={**{k: src.manifest.get(k) for k in ("task", "input_names", "output_names")},
                              "precision": "fp16", "steps": {"fp16": info}})
    return dest


def measure_candidate(folder: Path, setup: TrialSetup) -> dict:
    """Accuracy on the gate data, p50 latency at batch 1 (cpu target), and what the artifact's manifest says."""
    art = resolve(folder)
    ds, labels = labeled_data(art, setup.gate, max_samples=setup.max_samples)
    encoder = TextEncoder(art.folder)
    batch = 1 if setup.target == "cpu" else setup.eval_batch_size
    logits = evaluate(OrtSession(art.model_file, threads=setup.threads), encoder, ds.texts, batch, ds.pairs)
    latency = _latency(art.model_file, encoder, ds.texts, setup) if setup.target == "cpu" else None
    fallback = art.manifest.get("fallback") or {}
    return {"accuracy": gate_metric(logits, labels), "samples": int(len(labels)),
            "eval_batch_size": batch, "p50_ms": latency["latency_ms"]["p50"] if latency else None,
            "latency": latency, "precision": art.manifest.get("precision", "fp32"),
            "format": art.manifest.get("format"), "bytes": art.model_file.stat().st_size,
            "size_mb": round(art.model_file.stat().st_size / 1e6, 2),
            "fell_back": fallback.get("fell_back", []), "fallback_chosen": fallback.get("chosen"),
            "artifact": str(folder)}


def _latency(model: Path, encoder: TextEncoder, texts: list[str], setup: TrialSetup) -> dict:
    options = BenchOptions(batch_size=1, warmup=10, warmup_seconds=0.2, iterations=setup.latency_iterations,
                           min_seconds=setup.latency_seconds, threads=setup.threads)
    with OrtSession(model, threads=setup.threads) as session:
        feeds = [session.feeds(encoder([t])) for t in texts[:LATENCY_SENTENCES]]

        def run(batch: dict) -> None:  # None: no device-side time to report
            session.run(batch)
        result = measure(run, feeds, options)
    keep = ("iterations", "latency_ms", "cv", "noisy")
    return {k: result[k] for k in keep} | {"threads": setup.threads}


# --- Ray: the same trial as a task on any node of a cluster -------------------------------------------------

def pack(setup: TrialSetup) -> dict:
    """The files a trial reads, as bytes (for ``ray.put``): the fp32 artifact folder (the rows travel in the setup)."""
    return {"source": {f.name: f.read_bytes() for f in Path(setup.source).iterdir() if f.is_file()}}


def ray_trial(candidate: Candidate, setup: TrialSetup, bundle: dict) -> dict:
    """The body of a Ray task: materialize the bundle on this node, run the trial, return its files as bytes.

    The node's scratch is ``$TMPDIR/.edgekit-trial.tmp-<pid>-*``, removed after; a worker killed mid-trial
    (SIGKILL: Ray's cancel or its OOM killer) leaves one that the node's next trial sweeps."""
    root = temp_sibling(Path(tempfile.gettempdir()) / "edgekit-trial")
    try:
        (root / "source").mkdir()
        for name, data in bundle["source"].items():
            (root / "source" / name).write_bytes(data)
        record = run_trial(candidate, replace(setup, source=str(root / "source")), root / "trials")
        record["files"] = None
        if record["status"] == "ok" and candidate.precision != "fp32":
            folder = Path(record["artifact"])
            record["files"] = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
        return record
    finally:
        discard(root)
