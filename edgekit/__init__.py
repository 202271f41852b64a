"""edgekit: an edge-deployment optimization toolkit.

The public API is re-exported lazily, so ``import edgekit`` stays light (no
torch, no onnxruntime) until a step is called.
"""

from __future__ import annotations

import importlib
import os

# ONNX Runtime 1.32's Linux wheel carries Microsoft's 1DS telemetry client: at import it writes $TMPDIR/.ses
# (a file outside any output folder, on every device the runtime is embedded in) and queues usage events.
# Off unless the user set the variable themselves; README "What edgekit changes in your process".
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

_API = {
    "export": "edgekit.export",
    "ExportOptions": "edgekit.export",
    "quantize": "edgekit.quantize",
    "QuantizeOptions": "edgekit.quantize",
    "check": "edgekit.check",
    "bench": "edgekit.bench",
    "optimize": "edgekit.pipeline",
    "OptimizeOptions": "edgekit.pipeline",
    "DataOptions": "edgekit.options",
    "GateOptions": "edgekit.options",
    "BenchOptions": "edgekit.bench",
    "prune": "edgekit.prune",
    "PruneOptions": "edgekit.prune",
    "finetune": "edgekit.finetune",
    "FinetuneOptions": "edgekit.finetune",
    "build": "edgekit.engine",
    "BuildOptions": "edgekit.engine",
    "load": "edgekit.runtime",
    "EdgekitError": "edgekit.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
