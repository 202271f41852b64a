"""int8 formats per target on the tiny model, calibrated on real (tiny) data."""

import numpy as np
import onnx
import pytest

from edgekit.errors import DataError, InputError, ModelError
from edgekit.quantize import QuantizeOptions, quantize


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_cpu_dynamic_uses_integer_matmuls(tiny_int8):
    kinds = ops(tiny_int8 / "model.onnx")
    assert "MatMulInteger" in kinds and "DynamicQuantizeLinear" in kinds
    assert "QuantizeLinear" not in kinds  # no QDQ on the CPU path
    assert (tiny_int8 / "tokenizer.json").is_file()


def test_tensorrt_target_is_symmetric_s8s8_qdq(tiny_onnx, tiny_data, tmp_path):
    art = quantize(tiny_onnx, tmp_path / "trt", QuantizeOptions(target="tensorrt", calibration_samples=16),
                   calibration_data=tiny_data)
    model = onnx.load(str(art.model_file))
    kinds = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in kinds and "DequantizeLinear" in kinds
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # every MatMul with a constant weight reads it through a DequantizeLinear
    producers = {o: n for n in model.graph.node for o in n.output}
    weighted = [n for n in model.graph.node if n.op_type == "MatMul"
                and producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"]
    assert len(weighted) >= 4
    assert art.manifest["steps"]["calibration"]["samples"] == 16


def test_static_needs_real_calibration_data(tiny_onnx, tmp_path):
    with pytest.raises(DataError, match="calibration data"):
        quantize(tiny_onnx, tmp_path / "x", QuantizeOptions(target="tensorrt"))
    assert not (tmp_path / "x").exists()


def test_bad_options(tiny_onnx, tiny_model, tmp_path):
    with pytest.raises(InputError, match="Choose one of: cpu, tensorrt, tensorrt-rtx"):
        quantize(tiny_onnx, tmp_path / "a", QuantizeOptions(target="trt"))
    with pytest.raises(InputError, match="Dynamic quantization cannot target tensorrt"):
        quantize(tiny_onnx, tmp_path / "b", QuantizeOptions(target="tensorrt", mode="dynamic"))
    with pytest.raises(ModelError, match="not an ONNX model"):
        quantize(tiny_model, tmp_path / "c")
