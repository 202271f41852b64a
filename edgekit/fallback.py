"""Accuracy-aware int8: per-layer fallback judged on accuracy and latency in one loop.

1. **Sensitivity** of every quantizable node, measured on real calibration
   sentences: the fp32 model is run with the node's float inputs exposed, the
   target's int8 scheme is applied to them (dynamic per-batch u8 for ``cpu``
   dynamic, calibrated symmetric s8 for TensorRT QDQ, per-channel s8 for
   weights) and the signal-to-quantization-noise ratio (SQNR, dB) is computed.
   The lower the SQNR, the more the node loses in int8.
2. **Fallback loop**: quantize everything; while the accuracy drop on a
   held-out labeled validation split exceeds the budget, keep the next most
   sensitive nodes in fp32 (1, 2, 4, 8, ... of them) and requantize from the
   cached calibration. Every trial is timed as well; among the trials within
   the budget the fastest is kept, so int8 that makes the model slower is
   dropped too.

The validation split is separate from the data the release gate is judged on.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import progress
from .artifact import ONNX_NAME, Artifact, atomic_dir, resolve, write_manifest
from .atomic import work_folder
from .bench import summarize
from .check import evaluate, gate_metric, labeled_data
from .data import TextDataset, load_dataset
from .deps import require
from .errors import InputError
from .schema import opt
from .quantize import QuantizeOptions, quantize
from .runtime.session import OrtSession
from .runtime.tokenizer import TextEncoder

SCHEDULE = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48)
EPS = 1e-9  # accuracy differences below this are float noise, not a drop


@dataclass
class FallbackOptions:
    """Options of the per-layer fallback loop (``optimize`` builds them in one place: pipeline.fallback_options)."""

    max_accuracy_drop: float = opt(0.01, help="Budget (fraction) the loop holds on the validation rows.")
    validation_samples: int = opt(400, help="Labeled sentences the loop judges on.")
    sensitivity_samples: int = opt(32, help="Sentences for the SQNR analysis.")
    latency_iterations: int = opt(60, help="Timed runs per trial (batch 1; cpu target only).")
    seed: int = opt(1, help="Seed of the validation subset (!= the calibration seed, so the splits differ).")


def sensitivity(onnx_path: Path, folder: Path, texts: list[str], options: QuantizeOptions) -> list[dict]:
    """SQNR (dB) of each quantizable node's inputs under the target's int8 scheme, most sensitive first."""
    onnx = require("onnx")
    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in options.resolved_op_types()]
    dynamic = options.resolved_mode() == "dynamic"
    const_b_only = options.target == "cpu"
    watched: dict[str, list[str]] = {}
    for n in nodes:
        if n.op_type == "Gather":
            acts = []
        else:
            acts = [i for i in n.input[:2] if i and i not in inits]
            if const_b_only and (len(n.input) < 2 or n.input[1] not in inits):
                continue  # ORT keeps activation x activation MatMuls in float on this target
        watched[n.name] = acts
    names = sorted({a for acts in watched.values() for a in acts})
    values = _collect(model, names, folder, texts)
    rows = []
    for n in nodes:
        if n.name not in watched:
            continue
        act = min((_act_sqnr(values[a], dynamic, symmetric=options.target != "cpu") for a in watched[n.name]),
                  default=math.inf)
        weight, reduce_axis = _weight_of(n, inits)
        wt = _weight_sqnr(onnx.numpy_helper.to_array(weight), reduce_axis) if weight is not None else math.inf
        rows.append({"node": n.name, "op": n.op_type, "activation_sqnr_db": round(act, 2),
                     "weight_sqnr_db": round(wt, 2), "sqnr_db": round(min(act, wt), 2),
                     "weakest": "activation" if act <= wt else "weight"})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def _collect(model, names: list[str], folder: Path, texts: list[str]) -> dict[str, list[np.ndarray]]:
    onnx = require("onnx")
    ort = require("onnxruntime")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    encoder = TextEncoder(folder)
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for text in progress.bar(texts, desc="sensitivity", unit="sentence"):
        feeds = {k: v for k, v in encoder([text]).items() if k in inputs}
        for name, value in zip(names, sess.run(names, feeds)):
            out[name].append(value)
    return out


def _sqnr(x: np.ndarray, y: np.ndarray) -> float:
    noise = float(np.linalg.norm(x - y))
    return 20 * math.log10(max(float(np.linalg.norm(x)), 1e-12) / max(noise, 1e-12))


def _act_sqnr(arrays: list[np.ndarray], dynamic: bool, symmetric: bool) -> float:
    if dynamic:  # per-call asymmetric u8, as DynamicQuantizeLinear does
        deq = []
        for x in arrays:
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            scale = (hi - lo) / 255 or 1.0
            zp = round(-lo / scale)
            deq.append((np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale)
    else:  # calibrated (min/max over the set) range
        flat = np.concatenate([a.ravel() for a in arrays])
        if symmetric:
            scale = float(np.abs(flat).max()) / 127 or 1.0
            deq = [np.clip(np.round(x / scale), -128, 127) * scale for x in arrays]
        else:
            lo, hi = min(float(flat.min()), 0.0), max(float(flat.max()), 0.0)
            scale = (hi - lo) / 255 or 1.0
            zp = round(-lo / scale)
            deq = [(np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale for x in arrays]
    return _sqnr(np.concatenate([a.ravel() for a in arrays]), np.concatenate([d.ravel() for d in deq]))


def _weight_of(node, inits) -> tuple[object | None, int]:
    """The node's 2-D weight initializer and the axis to reduce over for per-output-channel scales."""
    index = 0 if node.op_type == "Gather" else 1
    weight = inits.get(node.input[index]) if len(node.input) > index else None
    if weight is None or len(weight.dims) != 2:
        return None, 0
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    # MatMul B is [K, N]: channels are columns (reduce axis 0); Gemm transB / Gather tables: rows (reduce axis 1)
    return weight, 1 if (trans_b or node.op_type == "Gather") else 0


def _weight_sqnr(w: np.ndarray, reduce_axis: int) -> float:
    """Per-channel symmetric s8 (one scale per output channel)."""
    amax = np.abs(w).max(axis=reduce_axis, keepdims=True)
    scale = np.where(amax > 0, amax / 127, 1.0)
    return _sqnr(w, np.clip(np.round(w / scale), -128, 127) * scale)


def quantize_with_fallback(onnx: str | Path, out: str | Path, qoptions: QuantizeOptions, options: FallbackOptions,
                           validation_data: str | Path | TextDataset,
                           calibration_data: str | Path | TextDataset | None = None, force: bool = False) -> Artifact:
    """Quantize ``onnx`` keeping the fewest, most sensitive nodes in fp32 that hold the accuracy budget.

    ``validation_data`` (labeled) and ``calibration_data`` (None = the validation rows) are datasets read
    once by the caller (:func:`edgekit.data.load_dataset`, columns included) or paths read here once each.
    """
    src = resolve(onnx)
    if src.kind != "onnx":
        raise InputError(f"'{onnx}' is not an ONNX model", f"it is a {src.kind} artifact", "Run edgekit export first")
    with atomic_dir(out, force, inputs=(onnx, validation_data, calibration_data)) as tmp, \
            work_folder(tmp) as work:
        requested = qoptions  # what the manifest records; the trials run on the fused graph with fusion off
        src, qoptions, prepared = _fused_source(src, qoptions, work)
        validation = load_dataset(validation_data)
        calibration = validation if calibration_data is None else load_dataset(calibration_data,
                                                                               require_labels=False)
        ds, labels = labeled_data(src, validation, max_samples=options.validation_samples, seed=options.seed)
        encoder = TextEncoder(src.folder)
        batch = 1 if qoptions.resolved_mode() == "dynamic" else 32  # dynamic scales depend on padding
        reference = evaluate(OrtSession(src.model_file), encoder, ds.texts, batch)
        ref_acc = gate_metric(reference, labels)
        ranked = sensitivity(src.model_file, src.folder, calibration.subset(options.sensitivity_samples, 7).texts,
                             qoptions)
        trials = _search(src, qoptions, options, ranked, calibration, work, encoder, ds, labels, ref_acc, batch)
        best = _pick(trials, options.max_accuracy_drop)
        _finish(tmp, work / f"trial{best['index']}", requested, best, trials, ranked, ref_acc, prepared)
    return resolve(out)


def _fused_source(src: Artifact, qoptions: QuantizeOptions, work: Path) -> tuple[Artifact, QuantizeOptions, dict]:
    """For the cpu target, fuse and rewrite once up front (quantize.cpu_graph) so sensitivity ranks, and exclusions
    name, the nodes of the graph that ships; the trials then quantize it as it is. Returns the steps' records too."""
    from .artifact import copy_tokenizer_and_config
    from .quantize import cpu_graph

    if qoptions.target != "cpu":
        return src, qoptions, {}
    fused = work / "fused"
    fused.mkdir()
    graph, steps = cpu_graph(src.model_file, work, src.folder, qoptions)
    if graph == src.model_file:
        return src, qoptions, steps
    shutil.copyfile(graph, fused / ONNX_NAME)
    copy_tokenizer_and_config(src.folder, fused)
    return resolve(fused), replace(qoptions, fuse=False, split_skip_layernorm=False, first_token=False), steps


def _search(src, qoptions, options, ranked, calibration: TextDataset, work, encoder, ds, labels, ref_acc,
            batch) -> list[dict]:
    cache = work / "calibration.json"
    trials: list[dict] = []
    # on the cpu target, one more step past the first trial within budget: keeping more nodes in fp32 can be
    # faster (int8 that makes a node slower is dropped); elsewhere latency is not measurable here, so stop
    extra = 1 if qoptions.target == "cpu" else 0
    schedule = [k for k in SCHEDULE if k <= len(ranked)]
    for index, k in enumerate(progress.bar(schedule, desc="fallback trials", unit="trial")):
        excluded = [r["node"] for r in ranked[:k]]
        trial_opts = replace(qoptions, nodes_to_exclude=excluded)
        started = time.perf_counter()
        art = quantize(src.path, work / f"trial{index}", trial_opts, calibration_data=calibration,
                       calibration_cache=cache if trial_opts.resolved_mode() == "static" else None)
        logits = evaluate(OrtSession(art.model_file), encoder, ds.texts, batch)
        accuracy = gate_metric(logits, labels)
        # CPU latency of a TensorRT QDQ graph says nothing about the engine: time only the cpu target
        p50 = _latency(art.model_file, encoder, ds.texts, options.latency_iterations) if qoptions.target == "cpu" else None
        trials.append({"index": index, "excluded": k, "accuracy": accuracy, "accuracy_drop": ref_acc - accuracy,
                       "p50_ms": p50, "seconds": round(time.perf_counter() - started, 2)})
        timing = f", p50 {p50:.2f} ms" if p50 is not None else ""
        progress.echo(f"[edgekit] fallback trial {index}: {k} node(s) kept fp32 -> accuracy {accuracy:.4f} "
                      f"(drop {ref_acc - accuracy:+.4f}{timing}, {trials[-1]['seconds']:.1f} s)")
        within = [t for t in trials if t["accuracy_drop"] <= options.max_accuracy_drop + EPS]
        if within and index - within[0]["index"] >= extra:
            break
    return trials


def _latency(model: Path, encoder: TextEncoder, texts: list[str], iterations: int) -> float:
    with OrtSession(model) as sess:
        feeds = [sess.feeds(encoder([t])) for t in texts[:iterations]]
        for f in feeds[:5]:
            sess.run(f)
        times = []
        for f in feeds:
            t0 = time.perf_counter()
            sess.run(f)
            times.append((time.perf_counter() - t0) * 1000)
    return summarize(times, 1)["latency_ms"]["p50"]


def _pick(trials: list[dict], budget: float) -> dict:
    """The fastest trial within budget (fewest fp32 nodes where latency is not measurable here);
    if none is within budget, the most accurate one."""
    within = [t for t in trials if t["accuracy_drop"] <= budget + EPS]
    if within:
        return min(within, key=lambda t: (t["p50_ms"] if t["p50_ms"] is not None else 0.0, t["excluded"]))
    return max(trials, key=lambda t: (t["accuracy"], -t["excluded"]))


def _finish(tmp: Path, trial_dir: Path, qoptions, best, trials, ranked, ref_acc, prepared: dict) -> None:
    for f in trial_dir.iterdir():
        if f.is_file() and f.name != "manifest.json":
            shutil.copyfile(f, tmp / f.name)
    chosen = ranked[:best["excluded"]]
    fell_back = [{**r, "reason": f"{r['weakest']} SQNR {r['sqnr_db']} dB, among the {best['excluded']} most "
                                f"sensitive nodes needed to hold the budget"} for r in chosen]
    prior = resolve(trial_dir).manifest
    # the options as asked, with the nodes kept fp32 named: quantize with these on the same source reproduces it
    options = replace(qoptions, nodes_to_exclude=[r["node"] for r in chosen])
    write_manifest(tmp, "onnx", "quantize+fallback", inputs=prior.get("inputs", {}), options=asdict(options),
                   extra={**{k: prior.get(k) for k in ("task", "mode", "format", "input_names", "output_names")},
                          "steps": {**prepared, **(prior.get("steps") or {})},  # fusion + rewrites ran up front
                          "precision": "int8 (mixed)" if chosen else "int8",
                          "fallback": {"validation_fp32_accuracy": ref_acc, "chosen": best, "fell_back": fell_back,
                                       "trials": trials, "sensitivity": ranked}})
