"""TensorRT-RTX decoder engines for causal LMs: fp16 or int4 weight-only, built ahead of time without a GPU.

``build_lm_engine(model, out, LMEngineOptions(precision="int4", compute_capabilities=["8.6", "12.0"]))``
writes ``out``: the decoder ONNX the engine is built from (:mod:`edgekit.llm.rtx_onnx`; it runs on ONNX
Runtime's CPU EP, which is how accuracy is gated), the tokenizer and configs, ``model.engine`` and its sidecar
``model.engine.json`` (sizes, build time, profiles, the precision proof), all in one atomic rename.

**Profiles.** Two, as onnxruntime-genai's NvTensorRtRtx multi-profile mode builds them: profile 0 is
*prefill* (``input_ids`` ``[batch, 1..max_prompt]``, an empty KV cache), profile 1 is *decode*
(``input_ids`` ``[batch, 1]``, past length ``1..max_context-1``). Prefill is a GEMM over many tokens, decode a
GEMV over one: separate profiles give each its own kernels and let each execution context allocate for its
own worst case instead of both at once (a single profile spanning seq 1..N and past 0..N must size every
activation for the prefill maximum). The runtime binds one execution context per profile.

**Precision proof** (no GPU needed): the parsed network is walked (:func:`edgekit.inspect_network.walk`);
every MatMul must compute in fp16, and for int4 every weight MatMul quantized in the ONNX must be fed by a
DEQUANTIZE layer whose input is an INT4 constant. A build that contradicts this fails.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import progress
from ..artifact import ONNX_NAME, Artifact, atomic_dir, read_manifest
from ..deps import require
from ..engine import configure_targets
from ..engine_io import sidecar_path
from ..inspect_network import build_interruptibly, producers
from ..errors import BackendError, InputError, ModelError
from .rtx_onnx import PRECISIONS, RtxOnnxOptions, is_rtx_onnx, write_rtx_onnx

ENGINE_NAME = "model.engine"
PASS_THROUGH = ("SHUFFLE", "IDENTITY", "SQUEEZE", "UNSQUEEZE")
DEFAULT_MAX_CONTEXT = 2048


@dataclass
class LMEngineOptions:
    """Options of :func:`build_lm_engine`; the ``edgekit build`` flags share these names."""

    precision: str = field(default="fp16", metadata={"help": "fp16, or int4 weight-only (block Q/DQ) over fp16"})
    compute_capabilities: list[str] = field(default_factory=list, metadata={"help": "e.g. 8.6, 12.0"})
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    max_context: int | None = field(default=None, metadata={"help": "prompt + generated tokens (default: the "
                                                                     "model's, at most 2048)"})
    max_prompt: int | None = field(default=None, metadata={"help": "longest prefill (default: max_context)"})
    opt_prompt: int | None = field(default=None, metadata={"help": "prefill length tuned for (default 128)"})
    block_size: int = 0  # 0: the largest of 128/64/32/16 dividing every weight's rows
    keep_lm_head: bool = False
    keep_sensitive: int = 0
    keep_weights: tuple[str, ...] = ()  # module names kept fp16 (an AWQ fit's unrounded linears)
    workspace_mib: int | None = None
    cache_dir: str | None = None

    def onnx_options(self) -> RtxOnnxOptions:
        return RtxOnnxOptions(precision=self.precision, block_size=self.block_size, keep_lm_head=self.keep_lm_head,
                              keep_sensitive=self.keep_sensitive, keep_weights=tuple(self.keep_weights),
                              cache_dir=self.cache_dir)


def build_lm_engine(model: str | Path, out: str | Path, options: LMEngineOptions | None = None,
                    force: bool = False) -> Artifact:
    """Build a TensorRT-RTX decoder engine for causal LM ``model`` (HF folder, .gguf, pkg:, an LM artifact)."""
    options = options or LMEngineOptions()
    if options.precision not in PRECISIONS:
        raise InputError(f"--precision {options.precision} is not offered for causal-LM engines", None,
                         f"Choose one of: {', '.join(PRECISIONS)}")
    _check_lm_input(model)
    trt = require("tensorrt_rtx")
    targets = _targets(trt, options)
    check_lengths(_context_length(model, options), options)  # before minutes of export
    with atomic_dir(out, force, inputs=(model,)) as tmp:
        if is_rtx_onnx(Path(str(model)), options.precision):
            _copy_folder(Path(str(model)), tmp)
        else:  # an fp16 decoder folder asked for int4 is quantized from its fp16 ONNX, without a second export
            write_rtx_onnx(model, tmp, options.onnx_options())
        sidecar = _build(trt, tmp, options, targets)
    return Artifact(Path(out), "engine", Path(out) / ENGINE_NAME, sidecar)


def _check_lm_input(model) -> None:
    """An ONNX folder that is not a causal LM (an encoder artifact) gets a one-line error before any work."""
    path = Path(str(model))
    if path.is_dir() and (path / ONNX_NAME).is_file():
        task = read_manifest(path).get("task")
        if task != "text-generation":
            raise ModelError(f"'{path}' is not a causal-LM artifact", f"its task is {task or 'not recorded'}; "
                             "decoder engines need a text-generation model",
                             "Build encoders with --precision fp16/int8, or pass a causal-LM folder")


INT4_MIN_CC = 8.0  # measured with TensorRT-RTX 1.7: 7.5 refused by its compiler, 8.0 built


def _targets(trt, options: LMEngineOptions) -> list[str]:
    from ..engine import BuildOptions, compute_capabilities

    try:
        targets = compute_capabilities(trt, BuildOptions(backend="tensorrt-rtx",
                                                         compute_capabilities=list(options.compute_capabilities)))
    except InputError as exc:  # the encoder hint (classic TensorRT for 9.0) does not apply to decoder engines
        raise InputError(exc.what.split(" (")[0], "decoder engines are built with TensorRT-RTX, for RTX GPUs only",
                         exc.fix) from None
    too_old = [t for t in targets if float(t) < INT4_MIN_CC]
    if options.precision == "int4" and too_old:  # TensorRT-RTX's compiler refused it after the export and the AWQ fit
        raise InputError(f"int4 decoder engines cannot target compute capability {', '.join(too_old)}",
                         "TensorRT-RTX compiles int4 weights for 8.0 and newer only ('HW-specific datatypes: int4')",
                         f"Pass --precision fp16 for {', '.join(too_old)}, or leave "
                         f"{'it' if len(too_old) == 1 else 'them'} "
                         "out of --compute-capability")
    return targets


def _copy_folder(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and f.suffix not in (".engine", ".plan") and not f.name.endswith(".engine.json"):
            shutil.copyfile(f, dst / f.name)


def _build(trt, folder: Path, options: LMEngineOptions, targets: list[str]) -> dict:
    from ..inspect_network import parse, walk

    manifest = read_manifest(folder)
    started = time.perf_counter()
    builder, network, parser, logger = parse(trt, folder / ONNX_NAME, "TensorRT-RTX")
    summary = weight_matmuls(network)
    expected = (manifest.get("rtx") or {}).get("int4", {}).get("quantized_matmuls", 0)
    problems = verify_lm(summary, options.precision, expected)
    if problems:
        raise BackendError(f"--precision {options.precision} was not applied in the parsed network", problems[0],
                           "Rebuild the ONNX (delete the folder's manifest.json) or report the architecture")
    config = builder.create_builder_config()
    configure_targets(trt, config, targets, options.workspace_mib)
    profiles = lm_profiles(network, manifest.get("llm") or {}, options)
    for prof in profiles:
        _add_profile(builder, network, config, prof)
    plan = _serialize(trt, builder, network, config, logger, folder / ENGINE_NAME,
                      f"TensorRT-RTX {options.precision}, compute capabilities {', '.join(targets) or 'default'}, "
                      f"{len(profiles)} profiles")
    record = _record(trt, folder, options, targets, manifest)
    record.update(profiles=profiles, engine_bytes=plan.nbytes, build_seconds=round(time.perf_counter() - started, 2),
                  network={"layer_types": walk(network)["layer_types"], "matmul": summary},
                  verification={"network": "passed", "engine": _inspect(trt, plan, logger)})
    sidecar_path(folder / ENGINE_NAME).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return record


def _serialize(trt, builder, network, config, logger, engine: Path, detail: str):
    with progress.stage("engine", detail) as note:
        plan = build_interruptibly(trt, builder, network, config)
        if plan is None:
            raise BackendError("TensorRT-RTX could not build the decoder engine",
                               " ".join((logger.errors[-1] if logger.errors else "no error was logged").split())[:300],
                               "Check --compute-capability and the profile lengths, or set EDGEKIT_DEBUG=1")
        engine.write_bytes(memoryview(plan))
        note["note"] = f"{plan.nbytes / 1e6:.1f} MB"
    return plan


def _record(trt, folder: Path, options: LMEngineOptions, targets: list[str], manifest: dict) -> dict:
    from ..artifact import sha256_file, versions

    return {"edgekit_artifact": "engine", "step": "build", "engine": ENGINE_NAME,
            "engine_sha256": sha256_file(folder / ENGINE_NAME),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backend": "tensorrt-rtx", "backend_version": getattr(trt, "__version__", "unknown"),
            "task": "text-generation", "precision": options.precision, "compute_capabilities": targets or None,
            "targets": f"compute capabilities {', '.join(targets)}" if targets else "TensorRT-RTX default targets",
            "onnx_bytes": sum(f.stat().st_size for f in folder.glob("model.onnx*")),
            "onnx": {"file": ONNX_NAME, "precision": manifest.get("precision"), "rtx": manifest.get("rtx"),
                     "validation": {k: v for k, v in (manifest.get("validation") or {}).items() if k != "rows"}},
            "llm": manifest.get("llm"), "options": asdict(options), "versions": versions()}


def _context_length(model, options: LMEngineOptions) -> int:
    from .layout import dims
    from .source import resolve_source

    path = Path(str(model))
    if is_rtx_onnx(path):
        llm = read_manifest(path).get("llm") or {}
    else:
        llm = dims(resolve_source(model, options.cache_dir).folder)
    return int(llm.get("context_length") or DEFAULT_MAX_CONTEXT)


def check_lengths(context: int, options: LMEngineOptions) -> tuple[int, int, int]:
    """(max context, max prompt, opt prompt) after defaults, or a one-line InputError."""
    max_ctx = options.max_context or min(context, DEFAULT_MAX_CONTEXT)
    max_prompt = options.max_prompt or max_ctx
    opt_prompt = options.opt_prompt or min(128, max_prompt)
    batch = (options.min_batch, options.opt_batch, options.max_batch)
    for name, lo, opt, hi in (("batch", *batch), ("prompt", 1, opt_prompt, max_prompt)):
        if not 1 <= lo <= opt <= hi:
            raise InputError(f"Invalid {name} range: min {lo}, opt {opt}, max {hi}", "they must satisfy "
                             "1 <= min <= opt <= max", f"Fix the {name} options")
    if max_prompt > max_ctx or max_ctx > context or max_ctx < 2:
        raise InputError(f"Invalid lengths: max prompt {max_prompt}, max context {max_ctx}",
                         f"they must satisfy 1 <= max prompt <= max context <= the model's {context}, context >= 2",
                         "Fix --max-seq (context) / --max-prompt")
    return max_ctx, max_prompt, opt_prompt


def lm_profiles(network, llm: dict, options: LMEngineOptions) -> list[dict]:
    """The prefill and decode profiles: per input, (min, opt, max) shapes."""
    context = int(llm.get("context_length") or DEFAULT_MAX_CONTEXT)
    max_ctx, max_prompt, opt_prompt = check_lengths(context, options)
    batch = (options.min_batch, options.opt_batch, options.max_batch)
    opt_past = max(1, max_ctx // 2)
    prefill = {"seq": (1, opt_prompt, max_prompt), "past": (0, 0, 0)}
    decode = {"seq": (1, 1, 1), "past": (1, opt_past, max_ctx - 1)}
    return [_shapes(network, "prefill", batch, **prefill), _shapes(network, "decode", batch, **decode)]


def _shapes(network, name: str, batch, seq, past) -> dict:
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if tensor.name.startswith("past_key_values."):
            shapes[tensor.name] = [[batch[k], dims[1], past[k], dims[3]] for k in range(3)]
        elif tensor.name == "attention_mask":
            shapes[tensor.name] = [[batch[k], past[k] + seq[k]] for k in range(3)]
        elif tensor.name in ("input_ids", "position_ids"):
            shapes[tensor.name] = [[batch[k], seq[k]] for k in range(3)]
        else:
            raise ModelError(f"Decoder input '{tensor.name}' is not one edgekit knows how to profile",
                             "expected input_ids, attention_mask, position_ids and past_key_values.*",
                             "Export the model with edgekit's dynamo route")
    return {"name": name, "batch": list(batch), "sequence": list(seq), "past": list(past), "shapes": shapes}


def _add_profile(builder, network, config, prof: dict) -> None:
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in prof["shapes"].items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    if config.add_optimization_profile(profile) < 0:
        raise BackendError(f"TensorRT-RTX rejected the {prof['name']} profile", f"sequence {prof['sequence']}, "
                           f"past {prof['past']}, batch {prof['batch']}", "Check the batch and length options")


def weight_matmuls(network) -> dict:
    """Each MatMul layer's output type and what feeds its weight side: an INT4/INT8 DQ, a constant, or activations."""
    producer = producers(network)
    rows = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type.name != "MATRIX_MULTIPLY":
            continue
        src = _trace(layer.get_input(1), producer)
        weight = "activation"
        if src is not None and src.type.name == "DEQUANTIZE":
            weight = f"dequantize:{src.get_input(0).dtype.name}"
        elif src is not None and src.type.name == "CONSTANT":
            weight = f"constant:{src.get_output_type(0).name}"
        rows.append({"name": layer.name, "output": layer.get_output_type(0).name, "weight": weight})
    kinds = Counter(r["weight"] for r in rows)
    return {"total": len(rows), "outputs": dict(Counter(r["output"] for r in rows)), "weights": dict(kinds),
            "int4_weight": kinds.get("dequantize:INT4", 0),
            "fp16_weight": kinds.get("constant:HALF", 0),
            "not_fp16": [r["name"] for r in rows if r["output"] != "HALF"]}


def _trace(tensor, producer):
    for _ in range(16):
        layer = producer.get(tensor.name)
        if layer is None or layer.type.name not in PASS_THROUGH or layer.num_inputs == 0:
            return layer
        tensor = layer.get_input(0)
    return None


def verify_lm(summary: dict, precision: str, expected_int4: int) -> list[str]:
    """What in the parsed network contradicts ``precision`` (empty when it holds)."""
    problems = []
    if summary["not_fp16"]:
        problems.append(f"{len(summary['not_fp16'])} of {summary['total']} MatMul layers do not compute in fp16 "
                        f"({', '.join(summary['not_fp16'][:3])})")
    if precision == "int4":
        if not summary["int4_weight"] or summary["int4_weight"] < expected_int4:
            problems.append(f"{summary['int4_weight']} MatMul weights are fed by an INT4 DequantizeLinear, the ONNX "
                            f"quantized {expected_int4}")
    elif summary["int4_weight"] or not summary["fp16_weight"]:
        problems.append(f"an fp16 build has {summary['int4_weight']} int4 and {summary['fp16_weight']} fp16 weights")
    return problems


def _inspect(trt, plan, logger) -> dict | str:
    from ..inspect_network import inspect_engine
    from ..runtime.trt import cuda_devices

    gpus, why = cuda_devices()
    if not gpus:
        return f"not run: no GPU here ({why}); TensorRT-RTX deserializes engines only on a GPU"
    try:
        return inspect_engine(trt, plan, logger)
    except Exception as exc:  # noqa: BLE001  (an engine for other compute capabilities does not load here)
        return f"skipped: {' '.join(str(exc).split())[:200]}"
