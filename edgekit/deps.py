"""Lazy import of optional heavy dependencies.

``require("torch")`` imports and returns the module, or raises
:class:`MissingDependencyError` naming the extra that installs it. Importing
``edgekit`` itself never imports any of these.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from types import ModuleType

from .errors import MissingDependencyError

#: module -> the extra of edgekit that installs it
EXTRAS: dict[str, str] = {
    "torch": "toolchain",
    "transformers": "toolchain",
    "optimum": "toolchain",
    "onnx": "toolchain",
    "onnxscript": "toolchain",
    "accelerate": "toolchain",
    "onnxruntime": "cpu",
    "tokenizers": "cpu",
    "tensorrt": "gpu",
    "tensorrt_rtx": "rtx",
    "cuda": "gpu",
    "datasets": "datasets",
    "matplotlib": "report",
    "ray": "search",
    "onnxruntime_genai": "llm",
    "gguf": "llm",
    "peft": "llm",
    "llama_cpp": "llm",
    "jinja2": "cpu",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming its extra."""
    top = module.split(".")[0]
    if top in ("transformers", "torch", "optimum"):
        _quiet_toolchain()
    try:
        imported = importlib.import_module(module)
    except (ImportError, OSError) as exc:  # not installed, or a shared library that fails to load
        raise MissingDependencyError(top, EXTRAS.get(top, "toolchain"), exc) from exc
    if top == "onnxruntime":
        importlib.import_module("onnxruntime").set_default_logger_severity(3)  # errors only: shape-merge advice is not the user's to read
    if top == "transformers":
        # transformers resets its logger on import: quiet it afterwards (load reports, advisories)
        importlib.import_module("transformers").utils.logging.set_verbosity_error()
    return imported


def available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it twice)."""
    return importlib.util.find_spec(module) is not None


def _quiet_toolchain() -> None:
    """Keep third-party progress chatter out of edgekit's own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # torch.onnx logs a warning per missing torchvision op at import; not ours to show
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)

