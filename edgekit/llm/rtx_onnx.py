"""Causal LM -> the decoder ONNX a TensorRT-RTX engine is built from (fp16 or int4 weight-only), validated on ORT.

Route: ``torch.onnx.export(dynamo=True)`` at opset 21 (:func:`edgekit.llm.export.dynamo_export`), then
:mod:`edgekit.llm.rtx_graph` (fp16, int4 block Q/DQ). onnxruntime-genai's builder with ``-e NvTensorRtRtx``
is not used: its graphs keep ``com.microsoft`` GroupQueryAttention (and RotaryEmbedding / SkipSimplified-
LayerNorm on other EPs), which ONNX Runtime's NvTensorRtRtx EP runs through its own plugins but the
``tensorrt_rtx`` ONNX parser rejects ("failed to load GroupQueryAttention plugin"), so no standalone engine
can be built from them.

The folder written is an ordinary causal-LM artifact (``manifest.json`` task ``text-generation``, route
``dynamo``): ONNX Runtime's CPU EP runs it through :mod:`edgekit.runtime.generate`, which is how its accuracy is
gated; ``edgekit build`` adds ``model.engine`` beside it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import progress
from ..artifact import ONNX_NAME, Artifact, atomic_dir, write_manifest
from ..deps import require
from ..errors import InputError
from .layout import dims, finish_folder, llm_section
from .rtx_graph import RTX_OPSET, input_importance, quantize_int4, to_fp16_decoder
from .source import LMSource, check_causal_lm, resolve_source

PRECISIONS = ("fp16", "int4")
STEP = "rtx-lm"


@dataclass
class RtxOnnxOptions:
    """Options of :func:`prepare_rtx_onnx`; ``edgekit build`` flags share these names."""

    precision: str = field(default="fp16", metadata={"help": "fp16, or int4 weight-only over fp16"})
    block_size: int = field(default=0, metadata={"help": "int4: input rows per scale (16/32/64/128/256; 0 = the "
                                                         "largest of 128/64/32/16 dividing every weight's rows)"})
    keep_lm_head: bool = field(default=False, metadata={"help": "int4: keep lm_head in fp16"})
    keep_sensitive: int = field(default=0, metadata={"help": "int4: MatMuls left in fp16, those int4 changes most"})
    keep_weights: tuple[str, ...] = field(default=(), metadata={"help": "int4: modules whose MatMuls stay fp16 "
                                                                         "(those an AWQ fit left unrounded)"})
    calibrate: bool = field(default=True, metadata={"help": "int4: weight each scale search by the input channels' "
                                                            "mean square on the calibration prompts"})
    validation_tokens: int = field(default=8, metadata={"help": "greedy tokens compared with PyTorch per prompt"})
    prompts: tuple[str, ...] = field(default=(), metadata={"help": "validation prompts (default: built-in ones)"})
    cache_dir: str | None = field(default=None, metadata={"help": "where imported GGUF folders are cached"})

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"Unknown precision '{self.precision}' for a causal-LM engine", None,
                             f"Choose one of: {', '.join(PRECISIONS)}")


def is_rtx_onnx(folder: Path, precision: str | None = None) -> bool:
    """True when ``folder`` already holds a decoder ONNX written by :func:`prepare_rtx_onnx` (of ``precision``)."""
    from ..artifact import read_manifest

    m = read_manifest(Path(folder))
    return m.get("step") == STEP and (precision is None or m.get("precision") == precision) \
        and (Path(folder) / ONNX_NAME).is_file()


def prepare_rtx_onnx(model: str | Path, out: str | Path, options: RtxOnnxOptions | None = None,
                     force: bool = False) -> Artifact:
    """Write the fp16 / int4 decoder ONNX of causal LM ``model`` (HF folder, .gguf, pkg:, LM artifact) to ``out``."""
    options = options or RtxOnnxOptions()
    options.validate()
    with atomic_dir(out, force, inputs=(model,)) as tmp:
        manifest = write_rtx_onnx(model, tmp, options)
    return Artifact(Path(out), "onnx", Path(out) / ONNX_NAME, manifest)


def write_rtx_onnx(model: str | Path, folder: Path, options: RtxOnnxOptions) -> dict:
    """:func:`prepare_rtx_onnx` into an existing (staging) ``folder``; returns the manifest.

    int4 asked of an fp16 decoder folder (``model``) quantizes its fp16 ONNX (:func:`derive_int4`): no export.
    """
    if options.precision == "int4" and is_rtx_onnx(Path(str(model)), "fp16"):
        return derive_int4(Path(str(model)), folder, options)
    source = resolve_source(model, options.cache_dir)
    check_causal_lm(source.folder)
    started = time.perf_counter()
    graph_info = _convert(source, folder, options)
    finish_folder(source.folder, folder, "dynamo")
    seconds = time.perf_counter() - started
    validation = validate_rtx(source.folder, folder / ONNX_NAME, options)
    onnx_bytes = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
    inputs = {"model": source.origin, "folder": str(source.folder)}
    return write_manifest(folder, "onnx", STEP, inputs, asdict(options), {
        "task": "text-generation", "precision": options.precision, "route": "dynamo", "opset": RTX_OPSET,
        "llm": llm_section(source.folder, folder / ONNX_NAME), "rtx": graph_info, "validation": validation,
        "onnx_bytes": onnx_bytes, "export_seconds": round(seconds, 1)})


def derive_int4(fp16_folder: Path, folder: Path, options: RtxOnnxOptions) -> dict:
    """int4 from an fp16 decoder folder (no second export): its fp16 weights quantized, validated, a manifest."""
    from ..artifact import read_manifest

    onnx = require("onnx")
    parent = read_manifest(fp16_folder)
    hf = resolve_source(parent["inputs"]["model"], options.cache_dir).folder
    for f in fp16_folder.iterdir():
        if f.is_file() and not f.name.startswith(("model.onnx", "model.engine", "manifest", "report")):
            shutil.copyfile(f, folder / f.name)
    model = onnx.load(str(fp16_folder / ONNX_NAME))
    info = dict(parent.get("rtx") or {})
    with progress.stage("int4", f"block {options.block_size or 'auto'} weight-only Q/DQ, from {fp16_folder}"):
        info["int4"] = _int4(model, hf, folder, options)
    _save(model, folder)
    validation = validate_rtx(hf, folder / ONNX_NAME, options)
    return write_manifest(folder, "onnx", STEP, dict(parent["inputs"], derived_from=str(fp16_folder)),
                          asdict(options), {**{k: parent.get(k) for k in ("task", "route", "opset", "llm")},
                                            "precision": "int4", "rtx": info, "validation": validation,
                                            "onnx_bytes": sum(f.stat().st_size for f in folder.glob("model.onnx*"))})


def _int4(model, hf: Path, folder: Path, options: RtxOnnxOptions) -> dict:
    """:func:`quantize_int4` of the fp16 ``model`` with ``options``; with ``calibrate``, its scale search weighted by
    the input-channel mean squares of every weight MatMul on the calibration (validation) prompts."""
    from .validate import PROMPTS, encode_prompts

    importance = None
    if options.calibrate:
        tokenizer = require("transformers").AutoTokenizer.from_pretrained(str(hf))
        importance = input_importance(model, encode_prompts(tokenizer, tuple(options.prompts) or PROMPTS),
                                      folder / ".probe")
    return quantize_int4(model, options.block_size, skip_columns=dims(hf)["vocab"] if options.keep_lm_head else None,
                         importance=importance, keep_sensitive=options.keep_sensitive,
                         keep_weights=tuple(options.keep_weights))


def _save(model, folder: Path) -> None:
    require("onnx").save_model(model, str(folder / ONNX_NAME), save_as_external_data=True,
                               all_tensors_to_one_file=True, location=ONNX_NAME + ".data", size_threshold=1024)


def _convert(source: LMSource, folder: Path, options: RtxOnnxOptions) -> dict:
    from .export import dynamo_export

    onnx = require("onnx")
    work = folder / ".fp32"
    work.mkdir()
    try:
        with progress.stage("export", f"dynamo route, opset {RTX_OPSET}, KV cache, fp32"):
            dynamo_export(source.folder, work / ONNX_NAME, RTX_OPSET)
        with progress.stage("fp16", "weights and compute; KV cache fp16, logits fp32"):
            model, info = to_fp16_decoder(onnx.load(str(work / ONNX_NAME)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if options.precision == "int4":
        with progress.stage("int4", f"block {options.block_size or 'auto'} weight-only Q/DQ") as note:
            info["int4"] = _int4(model, source.folder, folder, options)
            note["note"] = f"{info['int4']['quantized_matmuls']} MatMuls"
    _save(model, folder)
    return info


def validate_rtx(hf_folder: Path, onnx_path: Path, options: RtxOnnxOptions) -> dict:
    """Greedy tokens and logits of the ONNX on ORT CPU against PyTorch fp32, recorded (the gate decides on int4)."""
    from .loop import DecoderSession
    from .validate import PROMPTS, compare, encode_prompts, load_causal_lm, torch_greedy

    model, tokenizer = load_causal_lm(hf_folder)
    decoder = DecoderSession(onnx_path)
    prompts = tuple(options.prompts) or PROMPTS
    rows = []
    pairs = list(zip(prompts, encode_prompts(tokenizer, prompts)))
    for text, ids in progress.bar(pairs, desc="validate on ORT CPU", unit="prompt"):
        rows.append({"prompt": text, **compare(torch_greedy(model, ids, options.validation_tokens), decoder, ids)})
    n = len(rows)
    return {"reference": "PyTorch fp32 greedy (KV cache)", "runtime": "onnxruntime CPU", "prompts": n,
            "tokens": options.validation_tokens,
            "identical_sequences": sum(r["agreement"] == 1.0 for r in rows) / n,
            "mean_agreement": round(sum(r["agreement"] for r in rows) / n, 4),
            "max_abs_logit_diff_on_common_prefix": max(r["max_abs_logit_diff"] for r in rows),
            "rows": [{k: r[k] for k in ("prompt", "agreement", "max_abs_logit_diff")} for r in rows]}
