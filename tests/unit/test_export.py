"""Export of a tiny BERT classifier the test builds: dynamic axes, validation, typed errors."""

import numpy as np
import onnx
import pytest

from edgekit.errors import ExportValidationError, InputError, ModelError
from edgekit.export import ExportOptions, export, validate
from edgekit.runtime.session import OrtSession
from edgekit.runtime.tokenizer import TextEncoder


def test_export_writes_validated_onnx_with_tokenizer(tiny_onnx):
    for name in ("model.onnx", "tokenizer.json", "config.json", "manifest.json"):
        assert (tiny_onnx / name).is_file(), name
    from conftest import read_json

    manifest = read_json(tiny_onnx / "manifest.json")
    assert manifest["task"] == "text-classification"
    assert manifest["validation"]["max_abs_diff"]["logits"] <= 1e-4
    assert manifest["validation"]["label_agreement"] == 1.0


def test_onnx_has_dynamic_batch_and_sequence(tiny_onnx):
    model = onnx.load(str(tiny_onnx / "model.onnx"))
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert all(d.dim_param and not d.dim_value for d in dims), inp
    enc = TextEncoder(tiny_onnx)
    with OrtSession(tiny_onnx / "model.onnx") as sess:
        for texts in (["good"], ["the plot was dull and long", "fun", "bad film", "great acting"]):
            out = sess.run(enc(texts))["logits"]
            assert out.shape == (len(texts), 2)


def test_validation_fails_with_each_output_named(tiny_model, tiny_onnx, tmp_path):
    """Corrupt one weight of the exported graph: validation must name the output, its diff and the tolerance."""
    from edgekit.hf import load_model

    model = onnx.load(str(tiny_onnx / "model.onnx"))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = onnx.numpy_helper.to_array(biggest).copy()
    biggest.CopyFrom(onnx.numpy_helper.from_array(arr * 1.5 + 0.1, biggest.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    torch_model, task = load_model(tiny_model)
    with pytest.raises(ExportValidationError, match=r"logits: max \|diff\| .* > tolerance 0.0001") as info:
        validate(torch_model, task, bad, TextEncoder(tiny_onnx), ["good film", "the plot was dull"], 1e-4)
    assert info.value.failures[0][0] == "logits" and info.value.failures[0][1] > 1e-4


def test_export_errors(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        export(tmp_path / "missing", tmp_path / "o1")
    (tmp_path / "notmodel").mkdir()
    (tmp_path / "notmodel" / "readme.txt").write_text("hi")
    with pytest.raises(ModelError, match="is not a model folder"):
        export(tmp_path / "notmodel", tmp_path / "o2")
    with pytest.raises(InputError, match="Unsupported opset"):
        export(tiny_model, tmp_path / "o3", ExportOptions(opset=99))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
