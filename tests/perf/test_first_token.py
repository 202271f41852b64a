"""The last layer's per-position tail on the pooled first token only: same logits, found in the graph."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.first_token import first_token_query, slice_first_token

ort = pytest.importorskip("onnxruntime")
H = 8


def _graph(tmp_path, *, pool="gather", extra_output=False, mix_positions=False):
    """x [B, S, H] -> attention-like mixing (MatMul over positions) -> MatMul W -> Add residual -> LayerNorm
    -> Relu -> pooled position 0 -> MatMul head."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32), n) for n in ("w", "head")]
    constants = {"g": np.ones(H, np.float32), "b": np.zeros(H, np.float32), "zero": np.array(0, np.int64),
                 "s0": np.array([0], np.int64), "s1": np.array([1], np.int64), "axis1": np.array([1], np.int64)}
    inits += [numpy_helper.from_array(v, n) for n, v in constants.items()]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
             helper.make_node("MatMul", ["probs", "x"], ["mixed"]),          # mixes positions: stays whole
             helper.make_node("MatMul", ["mixed", "w"], ["proj"]),
             helper.make_node("Add", ["proj", "x"], ["res"]),
             helper.make_node("LayerNormalization", ["res", "g", "b"], ["ln"], axis=-1)]
    last = "ln"
    if mix_positions:
        nodes.append(helper.make_node("CumSum", ["ln", "zero1"], ["cum"]))
        inits.append(numpy_helper.from_array(np.array(1, np.int64), "zero1"))
        last = "cum"
    nodes.append(helper.make_node("Relu", [last], ["hidden"]))
    if pool == "gather":
        nodes.append(helper.make_node("Gather", ["hidden", "zero"], ["pooled"], axis=1))
    else:
        nodes += [helper.make_node("Slice", ["hidden", "s0", "s1", "axis1"], ["first"]),
                  helper.make_node("Squeeze", ["first", "axis1"], ["pooled"])]
    nodes.append(helper.make_node("MatMul", ["pooled", "head"], ["logits"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("hidden", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", H])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def _logits(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x})[0]


@pytest.mark.parametrize("pool", ["gather", "slice"])
def test_tail_runs_on_the_first_position_with_the_same_logits(tmp_path, pool):
    path = _graph(tmp_path, pool=pool)
    result = slice_first_token(path, tmp_path / "cut.onnx")
    assert result["applied"] and result["nodes"] == 4, result  # MatMul W, Add, LayerNorm, Relu
    assert sorted(result["sliced"]) == ["mixed", "x"]         # the attention output and the residual
    x = np.random.default_rng(1).standard_normal((3, 7, H)).astype(np.float32)
    np.testing.assert_allclose(_logits(tmp_path / "cut.onnx", x), _logits(path, x), rtol=1e-5, atol=1e-5)
    kinds = [n.op_type for n in onnx.load(str(tmp_path / "cut.onnx")).graph.node]
    assert kinds.count("Slice") == 2 + (pool == "slice")


def test_not_applied_when_every_position_is_read(tmp_path):
    path = _graph(tmp_path, extra_output=True)   # the hidden states are an output too
    assert not slice_first_token(path, tmp_path / "cut.onnx")["applied"]
    assert not (tmp_path / "cut.onnx").exists()


def test_an_op_mixing_positions_ends_the_tail(tmp_path):
    path = _graph(tmp_path, mix_positions=True)  # CumSum over positions right before the pooled Relu
    result = slice_first_token(path, tmp_path / "cut.onnx")
    assert not result["applied"], result


def test_reference_model_int8_runs_its_last_feed_forward_on_one_token(ref_model, sst2_dev, tmp_path):
    """MiniLM-L6: the checked rewrites are in the manifest; the int8 graph has no SkipLayerNormalization left and
    its last layer's output projection and feed-forward run on one position."""
    from edgekit.export import ExportOptions, export
    from edgekit.quantize import QuantizeOptions, quantize

    fp32 = export(ref_model, tmp_path / "fp32", ExportOptions(validation_samples=16), data=sst2_dev)
    int8 = quantize(fp32.path, tmp_path / "int8", QuantizeOptions(target="cpu", mode="dynamic"))
    steps = int8.manifest["steps"]
    assert steps["skip_layernorm"]["applied"] and steps["skip_layernorm"]["split"] == 12, steps["skip_layernorm"]
    first = steps["first_token"]
    assert first["applied"] and first["nodes"] == 8 and first["max_abs_diff"] < 1e-5, first
    query = steps["first_token_query"]
    assert query["applied"] and query["heads"] == 12 and query["max_abs_diff"] < 1e-5, query
    kinds = [n.op_type for n in onnx.load(str(int8.model_file)).graph.node]
    assert "SkipLayerNormalization" not in kinds and kinds.count("LayerNormalization") == 13
    assert kinds.count("QAttention") == 5 and kinds.count("MultiHeadAttention") == 1  # the last layer: one query
    kept = quantize(fp32.path, tmp_path / "kept", QuantizeOptions(target="cpu", mode="dynamic", first_token=False,
                                                                   split_skip_layernorm=False))
    assert "first_token" not in kept.manifest["steps"] and "first_token_query" not in kept.manifest["steps"]
    assert [n.op_type for n in onnx.load(str(kept.model_file)).graph.node].count("SkipLayerNormalization") == 12


def test_quantize_cli_turns_both_rewrites_off(tiny_onnx, tiny_int8, tmp_path):
    """`edgekit quantize --keep-skip-layernorm --no-first-token`: the fused op stays and every position runs."""
    import json
    import subprocess
    import sys

    out = tmp_path / "int8"
    done = subprocess.run([sys.executable, "-m", "edgekit", "quantize", str(tiny_onnx), "--out", str(out),
                           "--keep-skip-layernorm", "--no-first-token"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    steps = json.loads((out / "manifest.json").read_text())["steps"]
    assert not {"first_token", "first_token_query", "skip_layernorm"} & set(steps)
    kinds = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    default = [n.op_type for n in onnx.load(str(tiny_int8 / "model.onnx")).graph.node]
    assert kinds.count("SkipLayerNormalization") == 4 and "SkipLayerNormalization" not in default
    # the attention output and the residual cut for the tail; the attention output's cut then became a one-query
    # MultiHeadAttention, which reads the residual's cut
    assert default.count("Slice") == kinds.count("Slice") + 1 and default.count("MultiHeadAttention") == 1


def _attention_graph(tmp_path, opset=18, attention_output=False, **attention_attrs):
    """input [B, S, H] + mask [B, S] -> fused Attention (packed QKV) -> MatMul W -> Add residual -> LayerNorm ->
    position 0 -> MatMul head: the shape of a BERT-style last layer after fusion."""
    rng = np.random.default_rng(0)
    arrays = {"qkv_w": rng.standard_normal((H, 3 * H)), "qkv_b": rng.standard_normal(3 * H),
              "w": rng.standard_normal((H, H)), "head": rng.standard_normal((H, 2)), "g": np.ones(H), "b": np.zeros(H)}
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in arrays.items()]
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    nodes = [helper.make_node("Cast", ["mask"], ["mask32"], to=TensorProto.INT32),
             helper.make_node("Attention", ["x", "qkv_w", "qkv_b", "mask32"], ["att"], domain="com.microsoft",
                              num_heads=2, **attention_attrs),
             helper.make_node("MatMul", ["att", "w"], ["proj"]),
             helper.make_node("Add", ["proj", "x"], ["res"]),
             helper.make_node("LayerNormalization", ["res", "g", "b"], ["ln"], axis=-1),
             helper.make_node("Gather", ["ln", "zero"], ["pooled"], axis=1),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 2])]
    if attention_output:
        outputs.append(helper.make_tensor_value_info("att", TensorProto.FLOAT, ["B", "S", H]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", H]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S"])],
                              outputs, inits)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "model.onnx"))
    assert slice_first_token(tmp_path / "model.onnx", tmp_path / "cut.onnx")["applied"]
    return tmp_path / "cut.onnx"


def _masked_logits(path, x, mask):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"x": x, "mask": mask})[0]


@pytest.mark.parametrize("opset", [17, 18])  # export takes --opset 17 or 18
def test_last_attention_computes_the_first_query_only(tmp_path, opset):
    """The fused Attention feeding the first-token tail becomes a position-0 query projection, a key/value
    projection of every position and a one-query MultiHeadAttention: same logits with padding in the batch."""
    path = _attention_graph(tmp_path, opset=opset)
    result = first_token_query(path, tmp_path / "query.onnx")
    assert result["applied"] and result["heads"] == 2, result
    onnx.checker.check_model(str(tmp_path / "query.onnx"))  # nodes in topological order, valid at this opset
    kinds = [n.op_type for n in onnx.load(str(tmp_path / "query.onnx")).graph.node]
    assert "Attention" not in kinds and kinds.count("MultiHeadAttention") == 1
    assert kinds.count("Slice") == 1  # the residual's cut, shared by the query projection
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 7, H)).astype(np.float32)
    mask = np.ones((3, 7), np.int64)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    np.testing.assert_allclose(_masked_logits(tmp_path / "query.onnx", x, mask), _masked_logits(path, x, mask),
                               rtol=1e-5, atol=1e-5)


def test_attention_with_other_semantics_keeps_every_query(tmp_path):
    """A causal (unidirectional) Attention is not rewritten: MultiHeadAttention here has no such attribute."""
    path = _attention_graph(tmp_path, unidirectional=1)
    result = first_token_query(path, tmp_path / "query.onnx")
    assert not result["applied"] and "unidirectional" in result["reason"], result
    assert not (tmp_path / "query.onnx").exists()
    no_tail = first_token_query(tmp_path / "model.onnx", tmp_path / "query.onnx")  # slice_first_token not run
    assert not no_tail["applied"] and "slice_first_token" in no_tail["reason"], no_tail
    every = _attention_graph(tmp_path, attention_output=True)  # every position of the attention is an output
    result = first_token_query(every, tmp_path / "query.onnx")
    assert not result["applied"] and "read outside" in result["reason"], result
