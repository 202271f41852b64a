"""Causal language models: sources (HF folder, GGUF, pkg:), KV-cache export, int4/int8 weight-only quantization.

``export_lm(model, out, LMExportOptions())`` and ``quantize_lm(model, out,
LMQuantizeOptions())`` return :class:`edgekit.artifact.Artifact`. Imported
lazily, so ``import edgekit.llm`` pulls in neither torch nor onnx.
"""

from __future__ import annotations

_EXPORTS = {
    "export_lm": "export", "LMExportOptions": "export",
    "quantize_lm": "quantize", "LMQuantizeOptions": "quantize",
    "resolve_source": "source", "DecoderSession": "loop", "greedy": "loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'edgekit.llm' has no attribute {name!r}")
