"""int4 of a model whose weights are Q4_1 blocks (a de-quantized Q4_1 GGUF) keeps those blocks exactly: the
recovery is bit for bit or refused, and the rewritten MatMulNBits graph computes the source's logits."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import PROMPTS, build_tiny_lm  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="toolchain extra not installed")
needs_genai = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_genai") is None,
                                 reason="onnxruntime-genai (edgekit[llm]) not installed: builder route untested")


def _q4_1(w: np.ndarray) -> np.ndarray:
    """llama.cpp's Q4_1 round trip (blocks of 32 along the input: fp16 d = (max - min) / 15 and m = min), as gguf's
    de-quantizer gives it back in fp32."""
    n, k = w.shape
    b = w.reshape(n, k // 32, 32).astype(np.float32)
    lo = b.min(-1, keepdims=True).astype(np.float16).astype(np.float32)
    d = ((b.max(-1, keepdims=True) - lo) / 15).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint((b - lo) / np.where(d == 0, 1, d)), 0, 15).astype(np.float32)
    q[np.arange(n)[:, None], np.arange(k // 32)[None, :], b.argmin(-1)] = 0  # the block's min sits on code 0
    return (d * q + lo).reshape(n, k)


def _q8_0(w: np.ndarray) -> np.ndarray:
    """llama.cpp's Q8_0 round trip: fp16 d = absmax / 127 per block of 32, q = round(w / d)."""
    n, k = w.shape
    b = w.reshape(n, k // 32, 32).astype(np.float32)
    d = (np.abs(b).max(-1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    return (d * np.clip(np.rint(b / np.where(d == 0, 1, d)), -128, 127)).reshape(n, k)


def _q4_1_model(tmp_path: Path, head: str = "q4_1") -> Path:
    """A tiny Llama whose every linear weight is Q4_1 blocks (lm_head too, or with ``head="q8_0"`` the head and the
    embedding table Q8_0)."""
    import torch
    from transformers import AutoModelForCausalLM

    src = build_tiny_lm(tmp_path / "fp32", "llama", hidden=64)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                blocks = _q8_0 if head == "q8_0" and name == "lm_head" else _q4_1
                module.weight.copy_(torch.from_numpy(blocks(module.weight.numpy())))
        if head == "q8_0":  # the embedding table too, as in SmolLM2's GGUF
            table = model.get_input_embeddings().weight
            table.copy_(torch.from_numpy(_q8_0(table.numpy())))
    out = tmp_path / f"q4_1-{head}"
    model.save_pretrained(str(out))
    for f in src.iterdir():
        if f.is_file() and not (out / f.name).exists():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def test_recovery_is_bit_for_bit_or_refused():
    from edgekit.llm.source_blocks import recover_q4_1

    w = np.random.default_rng(0).standard_normal((8, 96)).astype(np.float32)
    assert recover_q4_1(w) is None  # plain fp32 weights are not Q4_1
    assert recover_q4_1(w[:, :90]) is None  # K not a multiple of 32
    blocks = _q4_1(w)
    q, d, m = recover_q4_1(blocks)
    assert q.dtype == np.uint8 and q.max() <= 15 and d.shape == m.shape == (8, 3)
    np.testing.assert_array_equal(np.repeat(d, 32, 1) * q + np.repeat(m, 32, 1), blocks)
    shifted = blocks.copy()
    shifted[0, 5] += 1e-3  # one weight off its grid: the whole tensor is refused
    assert recover_q4_1(shifted) is None


def test_q8_0_recovery_is_bit_for_bit_or_refused():
    from edgekit.llm.source_blocks import recover_q8_0

    w = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    assert recover_q8_0(w) is None and recover_q8_0(_q8_0(w)[:, :40]) is None
    q, d = recover_q8_0(_q8_0(w))
    assert q.dtype == np.int8 and d.shape == (8, 2)
    np.testing.assert_array_equal(np.repeat(d, 32, 1) * q, _q8_0(w))
    assert recover_q8_0(_q4_1(w)) is None  # another format is refused, not approximated


@needs_genai
def test_a_q8_0_head_and_table_are_kept_exactly_as_8_bit(tmp_path):
    import onnx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.llm.loop import DecoderSession
    from edgekit.llm.quantize import build_quantized, set_accuracy_level
    from edgekit.llm.validate import encode_prompts

    src = _q4_1_model(tmp_path, head="q8_0")
    out = tmp_path / "int4"
    build_quantized(src, out, "builder", "int4", 32, "lm_head", source_blocks=True)
    record = json.loads((out / "source_blocks.json").read_text())
    assert record["matmuls"] == 2 * 5 and record["lm_head"]["format"].startswith("Q8_0")
    assert record["embed_tokens"]["how"].startswith("GatherBlockQuantized")
    # qkv, o, gate + up (packed into one), down per layer; the 8-bit head is not set to 1
    assert set_accuracy_level(out / "model.onnx", 1) == 2 * 4
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    nbits = {n.name: {a.name: a.i for a in n.attribute} for n in model.graph.node if n.op_type == "MatMulNBits"}
    head = nbits[record["lm_head"]["node"]]
    assert head["bits"] == 8 and head["accuracy_level"] == 4
    assert {v["accuracy_level"] for k, v in nbits.items() if v["bits"] == 4} == {1}
    for node in model.graph.node:  # level 1 on the head too, for this check only: fp32 activations throughout
        if node.name == record["lm_head"]["node"]:
            next(a for a in node.attribute if a.name == "accuracy_level").i = 1
    onnx.save_model(model, str(out / "model.onnx"))
    ids = encode_prompts(AutoTokenizer.from_pretrained(str(src)), PROMPTS)[0]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()(torch.tensor([ids]))
    decoder = DecoderSession(out / "model.onnx", threads=1)
    seq = np.asarray([ids])
    logits = decoder.session.run(None, decoder.feeds(seq, np.ones_like(seq), decoder.empty_cache(1)))[0][0]
    assert float(np.abs(logits - ref.logits[0].numpy()).max()) < 1e-4  # the codes, scales and zero point 128



@needs_genai
def test_a_shortlisted_head_computes_the_q8_0_logits_it_picks(tmp_path):
    """keep shortlist: an int4 copy of the Q8_0 head picks each position's 64 logits; those are the Q8_0 head's
    (fp32 activations: PyTorch's within 1e-4) and so is every greedy token; the rest stay the int4 copy's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.llm.loop import DecoderSession
    from edgekit.llm.quantize import build_quantized, set_accuracy_level
    from edgekit.llm.source_blocks import SHORTLIST
    from edgekit.llm.validate import encode_prompts

    src = _q4_1_model(tmp_path, head="q8_0")
    out = tmp_path / "int4"
    build_quantized(src, out, "builder", "int4", 32, "shortlist", source_blocks=True)
    record = json.loads((out / "source_blocks.json").read_text())
    assert record["lm_head"]["shortlist"] == SHORTLIST and record["embed_tokens"]
    assert set_accuracy_level(out / "model.onnx", 1) == 2 * 4 + 1  # the layers' and the head's int4 copy
    ids = encode_prompts(AutoTokenizer.from_pretrained(str(src)), PROMPTS)[0]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()(torch.tensor([ids]))
    ref = ref.logits[0].numpy()
    decoder = DecoderSession(out / "model.onnx", threads=1)
    seq = np.asarray([ids])
    logits = decoder.session.run(None, decoder.feeds(seq, np.ones_like(seq), decoder.empty_cache(1)))[0][0]
    exact = np.isclose(logits, ref, atol=1e-4, rtol=0).sum(-1)
    assert (exact >= SHORTLIST).all() and (exact < ref.shape[-1]).all(), exact  # 64 exact, the tail int4
    assert (logits.argmax(-1) == ref.argmax(-1)).all()
    assert float(np.abs(logits - ref).max()) > 1e-2  # the int4 tail is not the Q8_0 head

@needs_genai
def test_the_int4_graph_computes_the_sources_logits(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.llm.loop import DecoderSession
    from edgekit.llm.quantize import build_quantized, set_accuracy_level
    from edgekit.llm.source_blocks import q4_1_weights
    from edgekit.llm.validate import encode_prompts

    src = _q4_1_model(tmp_path)
    assert len(q4_1_weights(src)) == 2 * 7 + 1  # 7 linears per layer + lm_head
    ids = encode_prompts(AutoTokenizer.from_pretrained(str(src)), PROMPTS)[0]
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    errors = {}
    for exact in (True, False):
        out = tmp_path / f"int4-{exact}"
        build_quantized(src, out, "builder", "int4", 32, "none", source_blocks=exact)
        set_accuracy_level(out / "model.onnx", 1)  # fp32 activations: the weights are the only difference
        decoder = DecoderSession(out / "model.onnx", threads=1)
        seq = np.asarray([ids])
        logits = decoder.session.run(None, decoder.feeds(seq, np.ones_like(seq), decoder.empty_cache(1)))[0][0]
        errors[exact] = float(np.abs(logits - ref).max())
        assert (out / "source_blocks.json").is_file() == exact
    record = json.loads((tmp_path / "int4-True" / "source_blocks.json").read_text())
    assert record["matmuls"] == 2 * 5 + 1 and record["left_to_the_builder"] == []  # qkv fused, gate, up, down, o
    import onnx

    graph = onnx.load(str(tmp_path / "int4-True" / "model.onnx"), load_external_data=False).graph
    inputs = {n.input[0] for n in graph.node if n.op_type == "MatMulNBits"}
    sums = sum(n.op_type == "ReduceSum" and n.name.endswith("_BlockSum") for n in graph.node)
    matmuls = sum(n.op_type == "MatMulNBits" for n in graph.node)
    assert sums == len(inputs) == matmuls == 2 * 4 + 1  # once per input: gate and up packed into one MatMulNBits
    assert record["packed"] == [[f"model.layers.{i}.mlp.{p}_proj" for p in ("gate", "up")] for i in range(2)]
    assert errors[True] < 1e-4 and errors[False] > 100 * errors[True], errors  # re-rounding: a second error


@needs_genai
def test_quantize_lm_keeps_the_blocks_and_skips_the_fit(tmp_path, capsys):
    from edgekit.llm.quantize import LMQuantizeOptions, quantize_lm

    src = _q4_1_model(tmp_path)
    options = LMQuantizeOptions(precision="int4", accuracy_levels=(1,), keep_fp="none", awq=True,
                                prompts=tuple(PROMPTS), tokens=8, cache_dir=str(tmp_path / "cache"))
    art = quantize_lm(src, tmp_path / "int4", options)
    q = art.manifest["llm"]["quantization"]
    assert q["block_size"] == 32 and q["awq"] is None and q["source_blocks"]["matmuls"] == 11
    assert {m["block_size"] for m in q["measurements"]} == {32} and q["chosen"]["greedy_agreement"] == 1.0
    assert "source weights are Q4_1 blocks" in capsys.readouterr().err
    assert not (art.path / "source_blocks.json").exists()
    plain = quantize_lm(src, tmp_path / "plain", LMQuantizeOptions(
        precision="int4", block_size=32, accuracy_levels=(1,), keep_fp="none", source_blocks=False,
        prompts=tuple(PROMPTS), tokens=8, cache_dir=str(tmp_path / "cache")))
    assert plain.manifest["llm"]["quantization"]["source_blocks"] is None


@pytest.mark.parametrize("rank", [3, 2])
def test_the_block_term_matches_the_weights_on_hidden_states_and_on_other_ranks(rank):
    """One MatMulNBits rewritten alone: [batch, seq, K] hidden states (a graph with input_ids) sum blocks by Reshape +
    ReduceSum; any other input (no input_ids) by a MatMul with a 0/1 matrix. Both compute x @ (d * q + m)^T."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.llm.source_blocks import apply_source_blocks, recover_q4_1

    n, k = 40, 96
    w = _q4_1(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32))
    blocks = {"proj": recover_q4_1(w)}
    shape = [2, 3, k] if rank == 3 else [5, k]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    if rank == 3:
        inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, shape[:2]))
    inits = [numpy_helper.from_array(np.zeros((n, k // 32, 16), np.uint8), "proj.MatMul.weight_Q4"),
             numpy_helper.from_array(np.ones(n * k // 32, np.float32), "proj.MatMul.weight_scales")]
    node = helper.make_node("MatMulNBits", ["x", *(i.name for i in inits)], ["y"], name="/proj/MatMul_Q4",
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=32, accuracy_level=1)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    record = apply_source_blocks(model, blocks)
    assert record["matmuls"] == 1
    sums = [n.op_type for n in model.graph.node if n.name.endswith("_BlockSum")]
    assert sums == (["ReduceSum"] if rank == 3 else ["MatMul"])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    feed = {"x": x, **({"input_ids": np.zeros(shape[:2], np.int64)} if rank == 3 else {})}
    got = session.run(None, feed)[0]
    np.testing.assert_allclose(got, x @ w.T, atol=1e-4, rtol=1e-4)
