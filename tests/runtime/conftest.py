"""Fixtures of the runtime tests: an artifact made by ``optimize`` on the tiny model (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_optimized(tiny_model, tiny_data, tmp_path_factory) -> Path:
    """``edgekit.pipeline.optimize`` on the tiny model: the folder a device app ships (int8 ONNX + tokenizer)."""
    from edgekit.pipeline import OptimizeOptions, optimize

    out = tmp_path_factory.mktemp("optimized") / "tiny-int8"
    # the tiny model has random weights: its accuracy is chance, so the gate is opened wide
    optimize(tiny_model, tiny_data, out, OptimizeOptions(iterations=5, warmup=1, max_accuracy_drop=0.5))
    return out
