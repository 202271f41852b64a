"""``edgekit build`` on a causal LM: :func:`edgekit.llm.rtx_engine.build_lm_engine` from the build command's flags.

The main CLI's ``build`` routes here when its input is a causal LM (an HF ``*ForCausalLM`` folder, a
``.gguf``, ``pkg:NAME``, or a text-generation artifact) or ``--precision int4`` is asked. Batch flags the
user did not set take the decoder defaults (batch 1), not the encoder ones; ``--max-seq`` is the context
(prompt + generated tokens), ``--opt-seq`` the prefill length tuned for, ``--max-prompt`` the longest prefill.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError
from ..tasks import causal_lm_architectures

ENCODER_ONLY_FLAGS = ("int8_base", "timing_cache", "data", "text_column", "min_seq", "allow_fallback")
INT4_ONLY_FLAGS = ("block_size", "keep_lm_head", "keep_sensitive")


def refuse_lm_file(model) -> None:
    """An InputError for the decoder ONNX file of a causal-LM folder: its engine is built from the folder (its
    manifest, tokenizer and generation config); as an encoder ONNX it failed on its KV-cache inputs' axes."""
    path = Path(str(model))
    if path.suffix == ".onnx" and path.is_file() and is_lm_input(path.parent):
        raise InputError(f"'{path}' is the decoder ONNX of the causal-LM folder '{path.parent}'",
                         "a causal-LM engine is built from its folder (manifest, tokenizer, generation config)",
                         f"Pass the folder: edgekit build {path.parent} --out ...")


def is_lm_input(model) -> bool:
    """True for what ``build`` should treat as a causal LM (no heavy imports)."""
    text = str(model)
    if text.startswith("pkg:") or text.endswith(".gguf"):
        return True
    path = Path(text)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("task") == "text-generation":
            return True
    except (OSError, ValueError, AttributeError):
        pass
    return not (path / "model.onnx").is_file() and bool(causal_lm_architectures(path))


def build(model, out, ccs: list[str], flags: dict, explicit: set[str], force: bool, as_json: bool) -> dict:
    """Run the decoder build with the CLI's flags; echo one summary line (or the sidecar as JSON)."""
    from ..engine import ENGINE_SUFFIXES, check_workspace
    from .rtx_engine import LMEngineOptions, build_lm_engine

    check_workspace(flags.get("workspace_mib"))  # before the export: 0 was ignored, 10**17 a traceback after it
    if Path(str(out)).suffix in ENGINE_SUFFIXES:
        raise InputError(f"--out '{out}' names an engine file, but a causal-LM engine is a folder",
                         "it holds the engine, its ONNX, tokenizer and generation config together",
                         f"Pass a folder, e.g. --out {Path(str(out)).with_suffix('')}")
    given = [k for k in ENCODER_ONLY_FLAGS if k in explicit]
    if given:
        raise InputError(f"--{given[0].replace('_', '-')} applies to encoder engines only",
                         "a causal-LM engine's profiles come from --max-prompt / --max-seq", "Drop it")
    if flags.get("backend", "tensorrt-rtx") != "tensorrt-rtx":
        raise InputError("Causal-LM engines are built with TensorRT-RTX only", "classic TensorRT needs the target "
                         "GPU at build time", "Pass --backend tensorrt-rtx")
    batch = {k: flags[k] for k in ("min_batch", "opt_batch", "max_batch") if k in explicit}
    if batch and "opt_batch" not in batch:
        batch["opt_batch"] = batch.get("min_batch", 1)
    precision = flags["precision"]
    if "precision" not in explicit:  # an fp16/int4 decoder folder keeps its own precision unless asked otherwise
        precision = _folder_precision(model) or precision
    int4_only = [k for k in INT4_ONLY_FLAGS if k in explicit]
    if int4_only and precision != "int4":  # they shape the int4 weights: ignored under fp16 before
        raise InputError(f"--{int4_only[0].replace('_', '-')} applies to --precision int4 only",
                         f"this build is {precision}", "Drop it, or pass --precision int4")
    if (flags.get("keep_sensitive") or 0) < 0:
        raise InputError(f"--keep-sensitive must be >= 0, got {flags['keep_sensitive']}",
                         "it counts the MatMuls kept in fp16", "Pass 0 (none kept) or more")
    if flags.get("block_size"):  # was refused after the export and the AWQ fit
        from .rtx_graph import check_block_size

        check_block_size(flags["block_size"])
    options = LMEngineOptions(precision=precision, compute_capabilities=ccs,
                              max_context=flags.get("max_seq"), max_prompt=flags.get("max_prompt"),
                              opt_prompt=flags.get("opt_seq"), block_size=flags.get("block_size") or 0,
                              keep_lm_head=bool(flags.get("keep_lm_head")),
                              keep_sensitive=flags.get("keep_sensitive") or 0,
                              workspace_mib=flags.get("workspace_mib"), **batch)
    art = build_lm_engine(model, out, options, force=force)
    m = art.manifest
    if as_json:
        click.echo(json.dumps(m, indent=2, default=str))
        return m
    mm = m["network"]["matmul"]
    pre, dec = m["profiles"]
    click.echo(f"Built {art.path} (tensorrt-rtx {m['backend_version']}, {m['precision']}, {m['targets']}): "
               f"{m['engine_bytes'] / 1e6:.1f} MB in {m['build_seconds']:.1f} s; {mm['outputs'].get('HALF', 0)}/"
               f"{mm['total']} MatMuls fp16, {mm['int4_weight']} weights int4; profiles prefill seq "
               f"{'/'.join(map(str, pre['sequence']))}, decode past {'/'.join(map(str, dec['past']))}. "
               f"ONNX beside it: {m['onnx_bytes'] / 1e6:.1f} MB.")
    return m


def _folder_precision(model) -> str | None:
    from .rtx_onnx import is_rtx_onnx

    path = Path(str(model))
    return json.loads((path / "manifest.json").read_text()).get("precision") if is_rtx_onnx(path) else None
