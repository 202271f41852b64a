"""Per-layer fallback on the tiny model: sensitivity ranking and the budgeted loop, on real ORT sessions."""

import math
from dataclasses import asdict

import numpy as np
import onnx
import pytest

from edgekit.fallback import FallbackOptions, _act_sqnr, _weight_sqnr, quantize_with_fallback, sensitivity
from edgekit.quantize import QuantizeOptions, quantize


def test_sqnr_orders_outliers_below_well_behaved_tensors():
    rng = np.random.default_rng(0)
    smooth = [rng.normal(size=(1, 8, 32)).astype(np.float32) for _ in range(4)]
    spiky = [a.copy() for a in smooth]
    for a in spiky:
        a[0, 0, 0] = 500.0  # one outlier stretches the int8 range
    for dynamic, symmetric in ((True, False), (False, True), (False, False)):
        assert _act_sqnr(spiky, dynamic, symmetric) < _act_sqnr(smooth, dynamic, symmetric) - 5
    w = rng.normal(size=(64, 16)).astype(np.float32)
    assert 30 < _weight_sqnr(w, 0) < math.inf


def test_sensitivity_ranks_every_quantizable_node(tiny_onnx, tiny_data):
    from edgekit.data import load_dataset

    texts = load_dataset(tiny_data).texts[:8]
    rows = sensitivity(tiny_onnx / "model.onnx", tiny_onnx, texts, QuantizeOptions(target="tensorrt"))
    model = onnx.load(str(tiny_onnx / "model.onnx"))
    matmuls = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    assert {r["node"] for r in rows} == matmuls
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_fallback_zero_budget_keeps_sensitive_nodes_and_records_why(tiny_onnx, tiny_data, tmp_path, target):
    """With a zero budget the loop must end with a trial at zero drop (worst case: everything in fp32)."""
    art = quantize_with_fallback(tiny_onnx, tmp_path / target, QuantizeOptions(target=target, calibration_samples=16),
                                 FallbackOptions(max_accuracy_drop=0.0, validation_samples=48, latency_iterations=5),
                                 validation_data=tiny_data)
    fb = art.manifest["fallback"]
    assert fb["trials"][0]["excluded"] == 0
    chosen = fb["chosen"]
    assert chosen["accuracy_drop"] <= 1e-9
    assert len(fb["fell_back"]) == chosen["excluded"]
    ranked = [r["node"] for r in fb["sensitivity"]]
    assert [r["node"] for r in fb["fell_back"]] == ranked[:chosen["excluded"]]
    assert all("SQNR" in r["reason"] for r in fb["fell_back"])
    # the manifest records the options as asked (not the trials' fusion-off copy) and the nodes kept fp32
    asked = asdict(QuantizeOptions(target=target, calibration_samples=16))
    recorded = art.manifest["options"]
    assert recorded["nodes_to_exclude"] == [r["node"] for r in fb["fell_back"]]
    assert {k: v for k, v in recorded.items() if k != "nodes_to_exclude"} == \
        {k: v for k, v in asked.items() if k != "nodes_to_exclude"}
    # ...which is enough to rebuild it: quantize with the recorded options gives the same bytes
    again = quantize(tiny_onnx, tmp_path / f"{target}-again", QuantizeOptions(**recorded), calibration_data=tiny_data)
    assert again.model_file.read_bytes() == art.model_file.read_bytes()
    kept_float = set(r["node"] for r in fb["fell_back"])
    graph = onnx.load(str(art.model_file)).graph
    assert not kept_float & {n.name for n in graph.node if n.op_type in ("MatMulInteger", "QLinearMatMul")}
