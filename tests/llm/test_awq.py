"""AWQ-style scale and clip fitting on tiny random decoders: the emulated int4 is ONNX Runtime's, scaling keeps
the fp32 function, the fit lowers the calibration output error, unsupported architectures get a one-line error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import PROMPTS, build_tiny_lm  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="toolchain extra not installed")


def _ids(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    from edgekit.llm.validate import encode_prompts

    return encode_prompts(AutoTokenizer.from_pretrained(str(folder)), PROMPTS) * 4


def _logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_emulated_int4_is_onnxruntimes_bit_for_bit():
    import torch
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    from edgekit.llm.awq import quantize_dequantize

    k, n, block = 96, 24, 32
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)  # MatMul weight: [in, out]
    blocks = k // block
    packed = np.zeros((n, blocks, block // 2), dtype=np.uint8)
    scales = np.zeros(n * blocks, dtype=np.float32)
    zero_points = np.zeros(n * ((blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, w, scales, zero_points, block, n, k, True)
    q = np.zeros((n, blocks, block), dtype=np.int32)
    q[..., 0::2], q[..., 1::2] = packed & 15, packed >> 4
    ort = ((q - 8) * scales.reshape(n, blocks, 1)).reshape(n, k)
    ours = quantize_dequantize(torch.from_numpy(w.T.copy()), block).numpy()  # nn.Linear layout: [out, in]
    np.testing.assert_allclose(ours, ort, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_scaling_keeps_the_function_and_clipping_lowers_the_error(tmp_path, arch):
    from edgekit.llm.awq import awq_folder

    src = build_tiny_lm(tmp_path / arch, arch, hidden=64)
    ids = _ids(src)
    scaled = awq_folder(src, tmp_path / "scaled", ids, block=32, clip=False)
    assert scaled.groups == 2 * 3 and scaled.tokens == sum(map(len, ids))  # GQA: no v -> o group
    np.testing.assert_allclose(_logits(tmp_path / "scaled", ids[0]), _logits(src, ids[0]), rtol=1e-4, atol=1e-4)
    fitted = awq_folder(src, tmp_path / "fitted", ids, block=32)
    assert fitted.error_awq < fitted.error_rtn  # clipping alone already lowers it on random weights
    assert (tmp_path / "fitted" / "tokenizer.json").is_file()
    assert fitted.row()["output_error_vs_rtn"] < 1.0


def test_an_outlier_channel_is_scaled(tmp_path):
    """One input channel with 30x the activations: plain rounding wastes its block's range, AWQ scales it."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.llm.awq import awq_folder

    src = build_tiny_lm(tmp_path / "llama", "llama", hidden=64)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.post_attention_layernorm.weight[3] *= 30.0
    model.save_pretrained(str(src))
    stats = awq_folder(src, tmp_path / "out", _ids(src), block=32, clip=False)
    gate_up = stats.alphas[1::3]  # groups per layer: qkv, gate_up, down
    assert all(a > 0 for a in gate_up), stats.alphas
    assert stats.error_awq < 0.9 * stats.error_rtn


def test_unsupported_architecture_is_a_one_line_error(tmp_path):
    from edgekit.errors import InputError
    from edgekit.llm.awq import awq_folder

    src = build_tiny_lm(tmp_path / "gpt2", "gpt2")
    with pytest.raises(InputError, match="AWQ calibration does not cover model_type 'gpt2'"):
        awq_folder(src, tmp_path / "out", [[5, 9, 12]], block=32)
    assert not (tmp_path / "out").exists()


def test_gptq_rounding_is_reproduced_by_round_to_nearest_and_beats_clipping():
    import torch

    from edgekit.llm.awq import _error, clip_ranges, gptq_weights, quantize_dequantize

    torch.manual_seed(0)
    w = torch.randn(48, 128)
    x = torch.randn(1500, 12) @ torch.randn(12, 128) + 0.3 * torch.randn(1500, 128)  # correlated inputs
    gram = x.T @ x / len(x)
    fitted = gptq_weights(w, gram, 32, 4)
    assert torch.equal(quantize_dequantize(fitted, 32), fitted)  # what the builder's rounding will produce
    ranges = clip_ranges(w, gram, 32, 4).repeat_interleave(32, 1)
    clipped = quantize_dequantize(torch.maximum(torch.minimum(w, ranges), -ranges), 32)
    assert _error(w, fitted, gram) < 0.5 * _error(w, clipped, gram) < 0.5 * _error(w, quantize_dequantize(w, 32), gram)


needs_genai = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_genai") is None,
                                 reason="onnxruntime-genai (edgekit[llm]) not installed: builder route untested")


@needs_genai
def test_the_builders_int4_is_exactly_the_fitted_weights(tmp_path):
    """The premise of fitting in the HF folder: onnxruntime-genai's builder rounds the fitted weights to themselves."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import AutoModelForCausalLM

    from edgekit.llm.awq import awq_folder
    from edgekit.llm.quantize import build_quantized

    src = build_tiny_lm(tmp_path / "llama", "llama", hidden=64)
    awq_folder(src, tmp_path / "fitted", _ids(src), block=32, gptq=True)
    build_quantized(tmp_path / "fitted", tmp_path / "int4", "builder", "int4", 32, "none")
    graph = onnx.load(str(tmp_path / "int4" / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fitted"), dtype=torch.float32)
    layer = model.model.layers[1]
    expected = {"attn.qkv_proj": torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight,
                                            layer.self_attn.v_proj.weight]),
                "mlp.down_proj": layer.mlp.down_proj.weight}
    for name, weight in expected.items():
        packed = inits[f"model.layers.1.{name}.MatMul.weight_Q4"]
        scales = inits[f"model.layers.1.{name}.MatMul.weight_scales"].reshape(packed.shape[0], packed.shape[1], 1)
        q = np.zeros((*packed.shape[:2], 32), dtype=np.int32)
        q[..., 0::2], q[..., 1::2] = packed & 15, packed >> 4
        rebuilt = ((q - 8).astype(np.float32) * scales).reshape(packed.shape[0], -1)  # float32, as ORT does
        np.testing.assert_array_equal(rebuilt, weight.detach().numpy())


@needs_genai
def test_quantize_lm_with_awq_fits_once_per_block_and_records_it(tmp_path, capsys):
    from edgekit.llm.quantize import LMQuantizeOptions, quantize_lm

    src = build_tiny_lm(tmp_path / "llama", "llama", hidden=64)
    options = LMQuantizeOptions(precision="int4", block_sizes=(16, 32), accuracy_levels=(4,), keep_fp="none",
                                awq=True, calibration=tuple(PROMPTS) * 2, prompts=tuple(PROMPTS), tokens=8,
                                cache_dir=str(tmp_path / "cache"))
    art = quantize_lm(src, tmp_path / "int4", options)
    q = art.manifest["llm"]["quantization"]
    assert q["awq"]["block_size"] == q["block_size"] and q["awq"]["method"].startswith("awq scales + gptq")
    assert q["awq"]["prompts"] == 6 and q["awq"]["output_error_vs_rtn"] < 1.0
    assert {m["block_size"] for m in q["measurements"]} == {16, 32}
    assert capsys.readouterr().err.count("awq: calibrate:") == 1  # the second block size reuses the statistics
    assert not (art.path / ".candidates").exists()


def test_keep_leaves_the_most_sensitive_linears_unrounded(tmp_path):
    """``keep=N``: the N linears whose rounding hurts their output most are scaled but not rounded (a downstream
    quantizer keeps them fp16); every other linear still rounds to itself on the grid."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.llm.awq import awq_folder, quantize_dequantize

    src = build_tiny_lm(tmp_path / "llama", "llama", hidden=64)
    stats = awq_folder(src, tmp_path / "fitted", _ids(src), block=32, gptq=True, grid="trt", keep=3)
    assert len(stats.kept) == 3 and list(stats.kept.values()) == sorted(stats.kept.values(), reverse=True)
    assert stats.row()["kept_unrounded"].keys() == stats.kept.keys()
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fitted"), dtype=torch.float32)
    off_grid = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head" and not name.endswith("o_proj"):
            w = module.weight.detach()
            if not torch.allclose(quantize_dequantize(w, 32, grid="trt"), w, rtol=2e-3, atol=1e-7):
                off_grid.add(name)
    assert off_grid == set(stats.kept)


def test_awq_needs_int4_and_a_supported_architecture(tmp_path):
    from edgekit.errors import InputError
    from edgekit.llm.quantize import LMQuantizeOptions, quantize_lm

    with pytest.raises(InputError, match="--awq is for int4"):
        quantize_lm(tmp_path / "missing", tmp_path / "o1", LMQuantizeOptions(precision="int8", awq=True))
    src = build_tiny_lm(tmp_path / "gpt2", "gpt2")
    with pytest.raises(InputError, match="does not cover model_type 'gpt2'"):
        quantize_lm(src, tmp_path / "o2", LMQuantizeOptions(awq=True, cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_gptq_on_the_tensorrt_grid_is_what_the_rtx_quantizer_gives_back():
    """``grid="trt"``: edgekit's TensorRT-RTX Q/DQ (fp16 weights, positive fp16 scales, its clip search on) returns
    the fitted weights: the same codes (a negative peak on -8, a positive one on +7), scales within fp16 rounding."""
    import torch

    from edgekit.llm.awq import _error, gptq_weights, quantize_dequantize
    from edgekit.llm.rtx_graph import dequantize_blocks, quantize_blocks

    torch.manual_seed(1)
    w = torch.randn(40, 128) * 0.05
    x = torch.randn(1500, 12) @ torch.randn(12, 128) + 0.3 * torch.randn(1500, 128)
    gram = x.T @ x / len(x)
    fitted = gptq_weights(w, gram, 32, 4, grid="trt")
    onnx_weight = fitted.T.half().float().numpy()  # the fp16 ONNX's [K, N] MatMul weight
    q, scale = quantize_blocks(onnx_weight, 32)
    np.testing.assert_allclose(dequantize_blocks(q, scale, 32), fitted.T.numpy(), rtol=2e-3, atol=1e-7)
    blocks, codes = fitted.T.numpy().reshape(4, 32, 40), q.reshape(4, 32, 40)
    negative = -blocks.min(1) > blocks.max(1)  # the block's peak is negative: on -8, all 16 levels used
    assert (codes.min(1)[negative] == -8).all() and (codes.max(1)[~negative] == 7).all()
    assert negative.any() and (~negative).any()
    assert _error(w, fitted, gram) < 0.5 * _error(w, quantize_dequantize(w, 32, grid="trt"), gram)
