"""TensorRT-RTX engines (fp32, fp16, int8) from the reference MiniLM on a machine without a GPU.

Asserts the must-shows of issue 3 that run here: real engines for two compute
capabilities, sidecars, int8 < fp16 < fp32 in engine bytes, every MatMul meant
to be int8 fed by DQ after parsing, the fp16 network's MatMuls in fp16 (its
layernorms in fp32), and the fp16 ONNX's SST-2 dev accuracy within 0.5 point.
"""

import json

import pytest

from conftest import requires_shared, requires_toolchain
from edgekit.deps import available

pytestmark = [requires_shared, requires_toolchain, pytest.mark.shared, pytest.mark.slow, pytest.mark.tensorrt_rtx,
              pytest.mark.skipif(not available("tensorrt_rtx"),
                                 reason="tensorrt_rtx not installed (pip install 'edgekit[rtx]')")]

CCS = ["8.6", "12.0"]
FP32_ACCURACY = 0.8716  # the reference model's README figure on SST-2 dev


@pytest.fixture(scope="module")
def engines(ref_model, sst2_dev, sst2_train, tmp_path_factory):
    """MiniLM exported once, quantized for TensorRT, and built in three precisions."""
    from edgekit.engine import BuildOptions, build
    from edgekit.export import export
    from edgekit.fallback import FallbackOptions, quantize_with_fallback
    from edgekit.quantize import QuantizeOptions

    root = tmp_path_factory.mktemp("minilm")
    fp32 = export(ref_model, root / "onnx", data=sst2_dev).path
    # what optimize --target tensorrt-rtx does: S8S8 QDQ calibrated on train, per-layer fallback judged on
    # held-out train rows (half the 1-point budget), never on dev
    int8 = quantize_with_fallback(fp32, root / "qdq", QuantizeOptions(target="tensorrt", calibration_samples=128),
                                  FallbackOptions(max_accuracy_drop=0.005), validation_data=sst2_train,
                                  calibration_data=sst2_train).path
    built = {}
    for precision, src in (("fp32", fp32), ("fp16", fp32), ("int8", int8)):
        options = BuildOptions(precision=precision, compute_capabilities=CCS)
        built[precision] = build(src, root / "engines" / precision / "model.engine", options, data=sst2_dev)
    return built


def test_engine_sizes_and_sidecars(engines):
    sizes = {p: a.manifest["engine_bytes"] for p, a in engines.items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"], sizes
    assert sizes["fp16"] < 0.6 * sizes["fp32"]
    for precision, art in engines.items():
        side = json.loads((art.path.parent / "model.engine.json").read_text())
        assert side["precision"] == precision and side["compute_capabilities"] == CCS
        assert side["backend"] == "tensorrt-rtx" and side["engine_bytes"] == art.path.stat().st_size
        assert side["verification"]["network"] == "passed" and side["onnx"]["sha256"]
        seq = side["profiles"][0]["sequence"]
        lengths = side["profiles"][0]["source"]["token_lengths"]
        assert seq[0] == 1 and seq[1] >= lengths["p50"] and seq[2] >= lengths["max"] and seq[2] <= 512


def _parsed(onnx_path):
    import tensorrt_rtx

    from edgekit.inspect_network import parse, walk

    keep = parse(tensorrt_rtx, onnx_path, "TensorRT-RTX")
    return walk(keep[1])


def test_every_int8_matmul_is_fed_by_dq(engines):
    from edgekit.precision import int8_matmul_nodes, load_onnx

    built_from = engines["int8"].manifest["onnx"]["built_from"]
    summary = _parsed(built_from)
    intended = int8_matmul_nodes(load_onnx(built_from))
    by_name = {m["name"]: m for m in summary["matmuls"]}
    assert len(intended) >= 6 * 6  # Q, K, V, output, 2 FFN per layer, at least
    not_fed = [n for n in intended if by_name[n]["fed_by"] != ["DEQUANTIZE", "DEQUANTIZE"]]
    assert not_fed == []
    assert summary["matmul"]["int8"] == len(intended)
    assert engines["int8"].manifest["network"]["matmul"]["int8"] == len(intended)


def test_fp16_network_matmuls_are_fp16_and_layernorms_fp32(engines):
    summary = _parsed(engines["fp16"].manifest["onnx"]["built_from"])
    floating = [m for m in summary["matmuls"] if m["output"] in ("FLOAT", "HALF")]
    assert floating and all(m["output"] == "HALF" for m in floating)
    assert set(summary["layer_types"]["NORMALIZATION"]) == {"FLOAT"}
    fp32 = _parsed(engines["fp32"].manifest["onnx"]["built_from"])
    assert all(m["output"] == "FLOAT" for m in fp32["matmuls"] if m["output"] in ("FLOAT", "HALF"))


@pytest.mark.parametrize("precision, budget", [("fp16", 0.005), ("int8", 0.01)])
def test_engine_onnx_keeps_accuracy_measured_with_check(engines, ref_model, sst2_dev, precision, budget):
    """The ONNX each engine was built from, on SST-2 dev with edgekit check: fp16 within 0.5 pt, int8 within 1."""
    from edgekit.check import check

    built_from = engines[precision].manifest["onnx"]["built_from"]
    result = check(ref_model, built_from, sst2_dev, batch_size=32)
    assert result["original_accuracy"] == pytest.approx(FP32_ACCURACY, abs=0.002)
    assert result["accuracy_drop"] <= budget, result
