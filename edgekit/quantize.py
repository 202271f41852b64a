"""int8 on ``onnxruntime.quantization``: the format follows the target.

* ``cpu``: what ONNX Runtime's CPU provider runs fast. The graph is fused
  first (fusion.py: Attention with packed QKV, SkipLayerNormalization,
  BiasGelu), so attention's QKV projection quantizes into QAttention. Two
  checked rewrites follow (checked_rewrite): SkipLayerNormalization back to
  Sum + LayerNormalization (ONNX Runtime's faster CPU kernel, measured in
  bench/fusion/), and, for a head that pools the first token, the last layer's
  per-position tail on that token only and its attention with that token's
  query only (first_token.py). With ``--choose``,
  cpu_int8.py builds the variants (dynamic per-channel, dynamic reduce-range,
  dynamic per-tensor, static QOperator U8S8 when there is calibration data),
  checks each against fp32 and times them interleaved on this CPU; the fastest
  at equal fidelity is kept and the manifest says why.
  ``dynamic``: int8 weights, activations quantized on the fly (MatMulInteger);
  ``static``: QOperator (QLinearMatMul) U8S8 calibrated on real data.
  QDQ is *not* used here: measured on this CPU, static S8S8 QDQ ran 7x slower
  than fp32.
* ``tensorrt`` / ``tensorrt-rtx``: symmetric S8S8 QDQ around MatMul/Gemm,
  per-channel weights, calibrated on real data; TensorRT fuses Q/DQ into int8
  kernels. No implicit calibrator (removed in TensorRT 11).

Calibration always uses real sentences from a dataset, never random tensors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import progress
from .artifact import ONNX_NAME, Artifact, atomic_dir, copy_tokenizer_and_config, resolve, sha256_file, write_manifest
from .atomic import work_folder
from .data import load_dataset
from .schema import opt
from .deps import require
from .errors import DataError, InputError, ModelError, first_line
from .runtime.tokenizer import TextEncoder, read_config

TARGETS = ("cpu", "tensorrt", "tensorrt-rtx")
MODES = ("dynamic", "static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: HF model_type -> ORT transformer optimizer model type (fusions it knows)
FUSION_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
                      "electra": "bert", "camembert": "bert", "mpnet": "bert", "deberta-v2": "bert",
                      "albert": "bert", "bart": "bart", "t5": "t5"}
# (no "gpt2": ORT's gpt2 fusions target the LM graph with past state; on a GPT-2 sequence classifier they leave
#  FullyConnect nodes the int8 quantizer cannot type. onnxscript's fusions still run on it.)


@dataclass
class QuantizeOptions:
    """Options of ``quantize``; the CLI flags and recipe keys share these names."""

    target: str = opt("cpu", help="cpu: fast on ONNX Runtime's CPU provider; tensorrt*: S8S8 QDQ.",
                      choices=TARGETS)
    mode: str | None = opt(None, help="Quantization mode (default: dynamic for cpu, static for TensorRT targets; "
                                      "TensorRT takes static only).", choices=MODES)
    calibration_method: str = opt("minmax", help="How static ranges are calibrated.", choices=CALIBRATION_METHODS)
    calibration_samples: int = opt(128, help="Sentences of the calibration data used for static calibration.")
    per_channel: bool = opt(True, help="Weight scales per output channel (--per-tensor: one per tensor).",
                            off_flag="per-tensor")
    fuse: bool = opt(True, help="cpu: ONNX Runtime's transformer fusions before quantizing.")
    split_skip_layernorm: bool = opt(True, help="cpu: fused SkipLayerNormalization written back as Sum + "
                                                "LayerNormalization, ONNX Runtime's faster CPU kernel (checked).",
                                     off_flag="keep-skip-layernorm")
    first_token: bool = opt(True, help="cpu: a classifier pooling the first token runs its last layer's "
                                       "feed-forward, and its attention's query, on that token only (same "
                                       "logits; checked).",
                            off_flag="no-first-token")
    op_types: list[str] | None = opt(None, help="Op types to quantize, comma-separated (default: MatMul, Gemm, "
                                                "and Gather + fused Attention -> QAttention for cpu).")
    nodes_to_exclude: list[str] = opt(factory=list, help="Nodes kept in fp32, comma-separated (per-layer fallback "
                                                         "adds its own).", flag="exclude-nodes")
    seed: int = opt(0, help="Seed of the calibration subset.")
    reduce_range: bool = opt(False, help="7-bit weights (avoids u8s8 saturation on CPUs without VNNI).")
    choose: bool = opt(False, help="cpu with no --mode: time the int8 variants on this machine and keep the fastest "
                                   "(the choice and its timings go into the manifest). Off by default: a choice by "
                                   "timing makes the artifact depend on the machine's load, not only on its inputs.",
                       off_flag="no-choose")

    def resolved_op_types(self) -> list[str]:
        if self.op_types is not None:
            return list(self.op_types)
        return ["MatMul", "Gemm", "Gather", "Attention"] if self.target == "cpu" else ["MatMul", "Gemm"]

    def resolved_mode(self) -> str:
        return self.mode or ("dynamic" if self.target == "cpu" else "static")

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"Unknown target '{self.target}'", None, f"Choose one of: {', '.join(TARGETS)}")
        if self.resolved_mode() not in MODES:
            raise InputError(f"Unknown mode '{self.mode}'", None, f"Choose one of: {', '.join(MODES)}")
        if self.target != "cpu" and self.resolved_mode() == "dynamic":
            raise InputError(f"Dynamic quantization cannot target {self.target}",
                             "TensorRT takes int8 only as Q/DQ with calibrated scales", "Use --mode static")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise InputError(f"Unknown calibration method '{self.calibration_method}'", None,
                             f"Choose one of: {', '.join(CALIBRATION_METHODS)}")
        if self.calibration_samples < 1:
            raise InputError("--calibration-samples must be at least 1", f"got {self.calibration_samples}", None)


def quantize(onnx: str | Path, out: str | Path, options: QuantizeOptions | None = None,
             calibration_data: str | Path | None = None, text_column: str | None = None,
             force: bool = False, calibration_cache: Path | None = None) -> Artifact:
    """Quantize an ONNX artifact (folder with model.onnx + tokenizer) into ``out``.

    ``calibration_cache``: a file where calibrated ranges are kept, so that
    requantizing the same model with other options (e.g. other
    ``nodes_to_exclude`` in the per-layer fallback) skips calibration.
    """
    options = options or QuantizeOptions()
    options.validate()
    src = _onnx_artifact(onnx)
    mode = options.resolved_mode()
    if mode == "static" and calibration_data is None:
        raise DataError("Static quantization needs calibration data", "scales are calibrated on real inputs",
                        "Pass --calibration-data with sentences from your task (tsv/csv/jsonl)")
    started = time.perf_counter()
    steps = {}
    with atomic_dir(out, force, inputs=(onnx, calibration_data)) as tmp, work_folder(tmp) as work:
        source = src.model_file
        if options.target == "cpu":
            source, steps = cpu_graph(source, Path(work), src.folder, options)
        target = tmp / ONNX_NAME
        if options.target == "cpu" and options.choose and options.mode is None and not options.nodes_to_exclude:
            steps["int8_choice"] = _choose_cpu_int8(source, target, src.folder, options, calibration_data,
                                                    text_column, Path(work), calibration_cache)
            chosen = steps["int8_choice"]["chosen_options"]
            mode, options = chosen["mode"], replace(options, **chosen)
        elif mode == "dynamic":
            _quantize_dynamic(source, target, options)
        else:
            steps["calibration"] = _quantize_static(source, target, src.folder, options, calibration_data,
                                                    text_column, Path(work), calibration_cache)
        copy_tokenizer_and_config(src.folder, tmp)
        write_manifest(tmp, "onnx", "quantize",
                       inputs={"onnx": str(src.model_file), "onnx_sha256": sha256_file(src.model_file)},
                       options=asdict(options),
                       extra={"task": src.manifest.get("task"), "precision": "int8", "mode": mode,
                              "format": quant_format(options.target, mode), "steps": steps,
                              "input_names": src.manifest.get("input_names"),
                              "output_names": src.manifest.get("output_names"),
                              "seconds": round(time.perf_counter() - started, 2)})
    return resolve(out)


def _choose_cpu_int8(source: Path, target: Path, folder: Path, options: QuantizeOptions, calibration_data,
                     text_column, work: Path, calibration_cache) -> dict:
    """Build the CPU int8 variants, keep the one cpu_int8.choose measures fastest at equal fidelity to fp32."""
    from . import cpu_int8
    from .export import BUILTIN_SENTENCES

    variants = cpu_int8.candidates(options, static_ok=calibration_data is not None)
    built, calibration = {}, None
    with progress.stage("int8 choice", f"{len(variants)} variants on this CPU"):
        for name, v in variants.items():
            built[name] = work / f"{name}.onnx"
            vopts = replace(options, **v)
            if v["mode"] == "dynamic":
                _quantize_dynamic(source, built[name], vopts)
            else:
                calibration = _quantize_static(source, built[name], folder, vopts, calibration_data, text_column,
                                               work, calibration_cache)
        texts = (load_dataset(calibration_data, text_column=text_column, require_labels=False)
                 .subset(cpu_int8.TIMING.samples, options.seed).texts if calibration_data else BUILTIN_SENTENCES)
        result = cpu_int8.choose(source, built, folder, texts)
    built[result["chosen"]].replace(target)
    result.update(cpu=cpu_int8.cpu_int8_flags(), chosen_options=variants[result["chosen"]],
                  calibration=calibration if variants[result["chosen"]]["mode"] == "static" else None)
    return result


def quant_format(target: str, mode: str) -> str:
    if mode == "dynamic":
        return "dynamic (MatMulInteger, int8 weights)"
    return "QOperator U8S8" if target == "cpu" else "QDQ S8S8 symmetric"


def cpu_graph(source: Path, work: Path, folder: Path, options: QuantizeOptions) -> tuple[Path, dict]:
    """The graph the cpu int8 quantizer sees, and its steps' records: fusion (``fuse``), then the checked rewrites
    (``split_skip_layernorm``, ``first_token`` then ``first_token_query``), each checked on the same real sentences.
    Files go into ``work``."""
    rewrites = [name for name, wanted in (("skip_layernorm", options.split_skip_layernorm),
                                          ("first_token", options.first_token),
                                          ("first_token_query", options.first_token)) if wanted]
    steps = {}
    if not options.fuse and not rewrites:  # e.g. the per-layer fallback's trials: the graph was prepared up front
        return source, steps
    feeds = _fusion_feeds(source, folder)
    if options.fuse:
        steps["fusion"] = fuse_transformer_graph(source, work / "fused.onnx", folder, feeds)
        source = work / "fused.onnx" if steps["fusion"]["applied"] else source
    for name in rewrites:
        steps[name] = checked_rewrite(name, source, work / f"{name}.onnx", feeds)
        source = work / f"{name}.onnx" if steps[name]["applied"] else source
    return source, steps


def fuse_transformer_graph(source: Path, dest: Path, folder: Path, feeds: list[dict] | None = None) -> dict:
    """Fused Attention, SkipLayerNormalization, BiasGelu... for ONNX Runtime's CPU provider (see fusion.py).

    onnxscript's ORT fusions first (they match the dynamo exporter's SDPA),
    ONNX Runtime's transformer optimizer for known model types as the
    alternative; the graph with more fused attention wins, and a fused graph
    is used only when it matches the unfused one on sample inputs.
    """
    from . import fusion

    config = read_config(folder)
    feeds = feeds or _fusion_feeds(source, folder)
    tried, best = {}, None
    model_type = FUSION_MODEL_TYPES.get(str(config.get("model_type", "")))
    candidates = [("onnxscript", lambda out: fusion.onnxscript_fuse(source, out))]
    if model_type is not None:
        heads, hidden = _config_int(config, "num_attention_heads", "n_head", "n_heads"), \
            _config_int(config, "hidden_size", "n_embd", "dim")
        candidates.append(("onnxruntime", lambda out: fusion.ort_fuse(source, out, model_type, heads, hidden)))
    for name, run in candidates:
        out = dest.with_name(f"{dest.stem}-{name}.onnx")
        try:
            counts = run(out)
            diff = fusion.max_output_diff(source, out, feeds)
        except Exception as exc:  # a fusion pass that breaks is skipped (recorded), the unfused graph still works
            tried[name] = {"error": first_line(exc, typed=True)}
            continue
        tried[name] = {"fused_ops": counts, "max_abs_diff": diff}
        if diff <= fusion.FUSION_ATOL and counts and (
                best is None or fusion.attention_count(counts) > fusion.attention_count(tried[best]["fused_ops"])):
            best = name
    if best is None:
        return {"applied": False, "reason": "no fusion pass produced a matching fused graph", "tried": tried}
    dest.with_name(f"{dest.stem}-{best}.onnx").replace(dest)
    return {"applied": True, "by": best, "fused_ops": tried[best]["fused_ops"], "tried": tried}


def checked_rewrite(name: str, source: Path, dest: Path, feeds: list[dict]) -> dict:
    """A graph rewrite for ONNX Runtime's CPU provider after fusion (``skip_layernorm``: fusion.split_skip_layernorm,
    ``first_token``: first_token.slice_first_token, ``first_token_query``: first_token.first_token_query), kept
    only when the logits match ``source``'s on ``feeds`` (real sentences, one alone and two padded together:
    _fusion_feeds); a graph the rewrite cannot handle, or one whose logits move, stays as it was (the reason
    recorded)."""
    from . import fusion
    from .first_token import first_token_query, slice_first_token

    rewrite = {"skip_layernorm": fusion.split_skip_layernorm, "first_token": slice_first_token,
               "first_token_query": first_token_query}[name]
    try:
        result = rewrite(source, dest)
        if result["applied"]:
            result["max_abs_diff"] = fusion.max_output_diff(source, dest, feeds)
    except Exception as exc:
        return {"applied": False, "reason": first_line(exc, typed=True)}
    if result["applied"] and result["max_abs_diff"] > fusion.FUSION_ATOL:
        return {"applied": False, "reason": f"logits moved by {result['max_abs_diff']:.1e} (> {fusion.FUSION_ATOL})"}
    return result


def _config_int(config: dict, *names: str) -> int:
    """The first of ``names`` in config.json (families name heads/hidden differently: n_head, n_embd, dim...)."""
    return next((int(config[n]) for n in names if isinstance(config.get(n), int)), 0)


def _fusion_feeds(model: Path, folder: Path) -> list[dict]:
    """Real sentences, one alone and two padded together, to check a fused graph against the unfused one."""
    from .export import BUILTIN_SENTENCES

    encoder, names = TextEncoder(folder), _input_names(model)
    return [{k: v for k, v in encoder(texts).items() if k in names}
            for texts in (BUILTIN_SENTENCES[:1], BUILTIN_SENTENCES[2:4])]


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice on the root logger; keep it out of edgekit's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_dynamic(source: Path, target: Path, options: QuantizeOptions) -> None:
    q = require("onnxruntime.quantization")
    try:
        with _quiet_root_logger():
            q.quantize_dynamic(str(source), str(target), weight_type=q.QuantType.QInt8,
                               per_channel=options.per_channel, reduce_range=options.reduce_range,
                               op_types_to_quantize=options.resolved_op_types(),
                               nodes_to_exclude=options.nodes_to_exclude, extra_options={"MatMulConstBOnly": True})
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:  # ORT's quantizer on a graph it cannot type
        raise ModelError("Dynamic int8 quantization failed", first_line(exc, typed=True),
                         "Retry with --no-fuse (the unfused graph), or set EDGEKIT_DEBUG=1 for the traceback") from exc


def _quantize_static(source: Path, target: Path, folder: Path, options: QuantizeOptions, calibration_data,
                     text_column, work: Path, calibration_cache: Path | None = None) -> dict:
    """Static int8 calibrated on real sentences; returns what the manifest records of the calibration."""
    reader = CalibrationReader(source, folder, calibration_data, text_column, options.calibration_samples,
                               options.seed, fixed_length=options.calibration_method != "minmax")
    _quantize_static_with(source, target, options, reader, work, calibration_cache)
    return {"samples": len(reader), "method": options.calibration_method, "data": str(calibration_data)}


def _quantize_static_with(source: Path, target: Path, options: QuantizeOptions, reader, work: Path,
                          calibration_cache: Path | None = None) -> None:
    q = require("onnxruntime.quantization")
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    prepared = work / f"{target.stem}-prepared.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        q.shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    trt = options.target != "cpu"
    extra = {"MatMulConstBOnly": not trt, "ActivationSymmetric": trt, "WeightSymmetric": True,
             "CalibTensorRangeSymmetric": trt, "CalibMovingAverage": False}
    if trt:
        extra.update({"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}, "DedicatedQDQPair": False,
                            "QuantizeBias": False})
    with _quiet_root_logger(), contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print progress
        q.quantize_static(str(prepared), str(target), reader,
                            quant_format=q.QuantFormat.QDQ if trt else q.QuantFormat.QOperator,
                            activation_type=q.QuantType.QInt8 if trt else q.QuantType.QUInt8,
                            weight_type=q.QuantType.QInt8, per_channel=options.per_channel,
                            op_types_to_quantize=options.resolved_op_types(), nodes_to_exclude=options.nodes_to_exclude,
                            calibrate_method=methods[options.calibration_method], extra_options=extra,
                            calibration_providers=["CPUExecutionProvider"],
                            calibration_cache_path=str(calibration_cache) if calibration_cache else None)


class CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over real sentences, one per batch.

    ``fixed_length`` pads every sentence to the longest one: ORT's histogram
    calibrators (entropy, percentile) need one shape across runs.
    """

    def __init__(self, model: Path, folder: Path, data, text_column, samples: int, seed: int,
                 fixed_length: bool = False):
        ds = load_dataset(data, text_column=text_column, require_labels=False).subset(samples, seed)
        encoder = TextEncoder(folder)
        names = _input_names(model)
        pad_to = max(encoder.token_lengths(ds.texts)) if fixed_length else None
        self._feeds = [{k: v for k, v in encoder([t], pad_to=pad_to).items() if k in names} for t in ds.texts]
        self.rewind()

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(progress.bar(self._feeds, desc="calibrate", unit="sentence"))


def _input_names(model: Path) -> set[str]:
    onnx = require("onnx")
    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return {i.name for i in graph.input if i.name not in initializers}


#: ops of a graph that is quantized already (int8 Q/DQ or QOperator, int4/int8 weight-only)
QUANTIZED_OPS = ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "QAttention",
                 "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv", "MatMulNBits", "QGemm")


def _onnx_artifact(path) -> Artifact:
    art = resolve(path)
    if art.kind != "onnx":
        raise ModelError(f"'{path}' is not an ONNX model", f"it is a {art.kind} artifact",
                         "Run edgekit export first and pass its output folder")
    onnx = require("onnx")
    graph = onnx.load(str(art.model_file), load_external_data=False).graph
    found = sorted({n.op_type for n in graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise InputError(f"'{path}' is quantized already", f"its graph has {', '.join(found)}",
                         "Quantize the fp32 export (edgekit export's output), not a quantized artifact")
    return art
