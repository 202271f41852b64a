"""Causal LM -> one ONNX decoder graph with a KV cache, validated against PyTorch on real prompts.

Two routes write the same I/O (see :mod:`edgekit.llm.loop`):

* ``builder``: onnxruntime-genai's model builder (Llama, Mistral, Qwen2/3,
  Phi, Gemma, ...): fused GroupQueryAttention, and ``genai_config.json`` so
  onnxruntime-genai opens the folder directly. It also quantizes
  (:mod:`edgekit.llm.quantize`).
* ``dynamo``: ``torch.onnx.export(dynamo=True)`` of a wrapper that feeds the
  per-layer past tensors through a ``DynamicCache``; dynamic batch, sequence
  and past axes. Covers what the builder does not (GPT-2 and friends).

Either way the export is compared with PyTorch before it is kept: the first
``validation_tokens`` greedy tokens must be identical on every prompt and the
logits along the way within ``atol``; otherwise nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import progress
from ..artifact import ONNX_NAME, Artifact, atomic_dir, write_manifest
from ..deps import available, require
from ..errors import InputError
from . import builder as genai_builder
from .layout import finish_folder, llm_section
from .source import LMSource, check_causal_lm, resolve_source
from .validate import check_token_budget, validate_lm

#: architectures onnxruntime-genai 0.18's builder dispatches on (builder.py create_model), exported with it by default
BUILDER_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "PhiForCausalLM",
    "Phi3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GraniteForCausalLM",
    "OlmoForCausalLM", "NemotronForCausalLM", "SmolLM3ForCausalLM",
})
ROUTES = ("auto", "builder", "dynamo")


@dataclass
class LMExportOptions:
    """Options of :func:`export_lm`; the CLI flags share these names."""

    route: str = field(default="auto", metadata={"help": "auto (builder where it covers the architecture, else "
                                                          "dynamo), builder (onnxruntime-genai), or dynamo"})
    opset: int = field(default=18, metadata={"help": "ONNX opset of the dynamo route"})
    validation_tokens: int = field(default=16, metadata={"help": "greedy tokens that must match PyTorch per prompt"})
    atol: float = field(default=1e-2, metadata={"help": "max |logit diff| allowed along the greedy path"})
    prompts: tuple[str, ...] = field(default=(), metadata={"help": "validation prompts (default: built-in ones)"})
    cache_dir: str | None = field(default=None, metadata={"help": "where imported GGUF folders are cached"})

    def validate(self) -> None:
        """Refuse bad values before the minutes of export they would otherwise wait through."""
        if self.route not in ROUTES:
            raise InputError(f"Unknown export route '{self.route}'", f"expected one of {', '.join(ROUTES)}",
                             "Pass --route auto, builder or dynamo")
        if isinstance(self.validation_tokens, bool) or not isinstance(self.validation_tokens, int) \
                or self.validation_tokens < 1:
            raise InputError(f"--validation-tokens must be a whole number >= 1, got {self.validation_tokens!r}",
                             "the export is judged on that many greedy tokens per prompt", "Use the default, 16")
        if not (isinstance(self.atol, (int, float)) and 0 <= self.atol < float("inf")):
            raise InputError(f"--atol must be a finite number >= 0, got {self.atol!r}",
                             "it bounds |logit diff| against PyTorch", "Use the default, 0.01")


def export_lm(model: str | Path, out: str | Path, options: LMExportOptions | None = None,
              force: bool = False) -> Artifact:
    """Export a causal LM (HF folder, .gguf or pkg:NAME) to ``out`` with its KV cache, validated on prompts."""
    options = options or LMExportOptions()
    options.validate()
    source = resolve_source(model, options.cache_dir)
    config = check_causal_lm(source.folder)
    route = choose_route(config, options.route)
    check_token_budget(source.folder, options.prompts, options.validation_tokens, "--validation-tokens")
    started = time.perf_counter()
    with atomic_dir(out, force, inputs=(model, source.folder)) as tmp:
        with progress.stage("export", f"{route} route, fp32, KV cache") as info:
            if route == "builder":
                genai_builder.build(source.folder, tmp, "fp32")
            else:
                dynamo_export(source.folder, tmp / ONNX_NAME, options.opset)
            info["note"] = f"{sum(f.stat().st_size for f in tmp.iterdir()) / 1e6:.1f} MB"
        export_seconds = time.perf_counter() - started
        finish_folder(source.folder, tmp, route)
        with progress.stage("validate", f"{options.validation_tokens} greedy tokens per prompt against PyTorch"):
            validation = validate_lm(source.folder, tmp / ONNX_NAME, options.prompts, options.validation_tokens,
                                     options.atol)  # loads the PyTorch model first: seconds to minutes of silence
        manifest = write_manifest(tmp, "onnx", "export-lm", _inputs(source), asdict(options), {
            "task": "text-generation", "precision": "fp32", "route": route,
            "llm": llm_section(source.folder, tmp / ONNX_NAME),
            "validation": validation, "export_seconds": round(export_seconds, 1),
        })
    return Artifact(Path(out), "onnx", Path(out) / ONNX_NAME, manifest)


def choose_route(config: dict, requested: str) -> str:
    """``builder`` for the architectures it covers (when installed), else ``dynamo``; an explicit request wins."""
    arch = (config.get("architectures") or [""])[0]
    if requested == "builder":
        if arch not in BUILDER_ARCHITECTURES:
            raise InputError(f"onnxruntime-genai's builder does not cover {arch or 'this model'}",
                             f"it builds {', '.join(sorted(BUILDER_ARCHITECTURES))}", "Pass --route dynamo")
        genai_builder.require_llm("onnxruntime_genai")
        return "builder"
    if requested == "dynamo":
        return "dynamo"
    return "builder" if arch in BUILDER_ARCHITECTURES and available("onnxruntime_genai") else "dynamo"


def _inputs(source: LMSource) -> dict:
    inputs = {"model": source.origin, "folder": str(source.folder)}
    if source.gguf_sha256:
        inputs["gguf_sha256"] = source.gguf_sha256
    return inputs


def dynamo_export(folder: Path, onnx_path: Path, opset: int = 18) -> None:
    """``torch.onnx.export(dynamo=True)`` of the model with per-layer past/present tensors and dynamic axes."""
    torch = require("torch")
    transformers = require("transformers")
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    text = model.config.get_text_config(decoder=True)
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    batch, seq, past, total = (torch.export.Dim(n) for n in ("batch", "seq", "past", "total"))
    b, s, p = 2, 3, 4  # example sizes above 1 so the exporter keeps every axis dynamic
    ids = torch.randint(0, min(100, text.vocab_size), (b, s))
    feeds = (ids, torch.ones(b, p + s, dtype=torch.int64), torch.arange(p, p + s).expand(b, s).contiguous(),
             *(torch.randn(b, kv_heads, p, head_dim) for _ in range(2 * layers)))
    kv = [f"{i}.{k}" for i in range(layers) for k in ("key", "value")]
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
              "position_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past} for _ in kv)}
    sink = io.StringIO()  # the exporter's deprecation and axis-name chatter went to the user's terminal
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(_KVWrapper(model, layers).eval(), feeds, str(onnx_path), dynamo=True, opset_version=opset,
                          input_names=["input_ids", "attention_mask", "position_ids",
                                       *(f"past_key_values.{n}" for n in kv)],
                          output_names=["logits", *(f"present.{n}" for n in kv)],
                          dynamic_shapes=shapes, optimize=True, external_data=True, verbose=False)


def _kv_wrapper_class():
    torch = require("torch")
    transformers = require("transformers")

    class KVWrapper(torch.nn.Module):
        """Flat tensors in, flat tensors out: past tensors go through a DynamicCache, present ones come back."""

        def __init__(self, model, layers: int):
            super().__init__()
            self.model, self.layers = model, layers

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = transformers.DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1])
                                                              for i in range(self.layers)])
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return KVWrapper


def _KVWrapper(model, layers: int):  # noqa: N802  (a factory standing in for the lazily defined class)
    return _kv_wrapper_class()(model, layers)
