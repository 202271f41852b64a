"""int4 / int8 weight-only quantization of tiny causal LMs: runs, loads, records what measurement chose."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import PROMPTS, build_tiny_lm  # noqa: E402

needs_toolchain = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="toolchain extra not installed")
needs_genai = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_genai") is None,
                                 reason="onnxruntime-genai (edgekit[llm]) not installed: builder route untested")


def _ops(onnx_path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}


def _loads_and_decodes(art) -> list[int]:
    from edgekit.llm.loop import DecoderSession, greedy

    tokens = greedy(DecoderSession(art.model_file), [5, 9, 12, 7], 6).tokens
    assert len(tokens) == 6 and all(0 <= t < 1024 for t in tokens)
    return tokens


@needs_toolchain
@needs_genai
def test_int4_builder_measures_accuracy_levels(tmp_path):
    from edgekit.llm.quantize import LMQuantizeOptions, quantize_lm

    src = build_tiny_lm(tmp_path / "llama", "llama")
    options = LMQuantizeOptions(precision="int4", block_sizes=(32,), accuracy_levels=(4, 1), keep_fp="none",
                                prompts=tuple(PROMPTS), tokens=8, cache_dir=str(tmp_path / "cache"))
    art = quantize_lm(src, tmp_path / "int4", options)
    assert "MatMulNBits" in _ops(art.model_file)
    q = art.manifest["llm"]["quantization"]
    assert art.manifest["precision"] == "int4" and q["block_size"] == 32 and q["accuracy_level"] in (1, 4)
    assert {(m["block_size"], m["accuracy_level"]) for m in q["measurements"]} == {(32, 4), (32, 1)}
    assert all(0.0 <= m["greedy_agreement"] <= 1.0 and m["decode_tokens_per_s"] > 0 for m in q["measurements"])
    assert (art.path / "genai_config.json").is_file() and not (art.path / ".candidates").exists()
    _loads_and_decodes(art)


@needs_toolchain
def test_int8_dynamo_keeps_lm_head_in_fp32(tmp_path):
    from edgekit.llm.quantize import LMQuantizeOptions, quantize_lm

    src = build_tiny_lm(tmp_path / "gpt2", "gpt2")
    options = LMQuantizeOptions(precision="int8", block_size=32, keep_fp="lm_head",
                                route="dynamo", prompts=tuple(PROMPTS[:2]), tokens=8,
                                cache_dir=str(tmp_path / "cache"))
    art = quantize_lm(src, tmp_path / "int8", options)
    q = art.manifest["llm"]["quantization"]
    assert q["fp32_fallback"] == ["lm_head", "embed_tokens"] and len(q["measurements"]) == 1
    assert q["accuracy_level"] == 4  # 8-bit MatMulNBits run at level 4 only (level 1 de-quantizes every call)
    import onnx

    graph = onnx.load(str(art.model_file), load_external_data=False).graph
    producers = {o: n for n in graph.node for o in n.output}
    assert producers["logits"].op_type == "MatMul"  # lm_head left in fp32
    assert any(n.op_type == "MatMulNBits" and any(a.name == "bits" and a.i == 8 for a in n.attribute)
               for n in graph.node)
    # int8 weight-only keeps greedy decoding of a tiny model close to PyTorch
    assert q["chosen"]["greedy_agreement"] >= 0.5
    _loads_and_decodes(art)


def test_choose_prefers_speed_within_slack():
    from edgekit.llm.quantize import Candidate, choose

    c = [Candidate(32, 4, "none", Path("a"), 0.95, 50.0), Candidate(32, 1, "none", Path("b"), 1.0, 40.0),
         Candidate(128, 4, "none", Path("c"), 0.80, 90.0)]
    assert choose(c, 0.02).folder == Path("b")
    assert choose(c, 0.06).folder == Path("a")


def test_choose_gives_a_near_tie_in_speed_to_the_smaller_artifact():
    from edgekit.llm.quantize import Candidate, choose

    big = Candidate(32, 4, "lm_head", Path("fp32-head"), 0.95, 50.0, size_mb=300.0)
    small = Candidate(32, 4, "lm_head_int8", Path("int8-head"), 0.94, 48.5, size_mb=110.0)
    slow = Candidate(32, 1, "none", Path("slow"), 0.95, 30.0, size_mb=90.0)
    assert choose([big, small, slow], 0.02).folder == Path("int8-head")   # within 5 % of the fastest, smaller
    assert choose([big, small, slow], 0.005).folder == Path("fp32-head")  # the smaller one trails on agreement


def test_auto_measures_fallbacks_in_order_of_size():
    from edgekit.llm.quantize import LMQuantizeOptions, _keeps

    assert _keeps(LMQuantizeOptions(), "builder") == [("none", "lm_head_int8"), ("mixed",), ("lm_head",)]
    assert _keeps(LMQuantizeOptions(precision="int8"), "builder") == [("none",), ("lm_head",)]
    assert _keeps(LMQuantizeOptions(), "dynamo") == [("none",), ("lm_head",)]
    assert _keeps(LMQuantizeOptions(keep_fp="mixed"), "builder") == [("mixed",)]
    assert _keeps(LMQuantizeOptions(), "builder", exact=True)[0] == ("lm_head",)  # a Q4_1 source: its own blocks first
    assert not any("shortlist" in r for r in _keeps(LMQuantizeOptions(), "builder", exact=True))  # asked for only


@needs_toolchain
@needs_genai
def test_int4_with_an_int8_lm_head(tmp_path):
    from edgekit.llm.quantize import LMQuantizeOptions, quantize_lm

    src = build_tiny_lm(tmp_path / "llama", "llama")
    options = LMQuantizeOptions(precision="int4", block_size=32, accuracy_level=1, keep_fp="lm_head_int8",
                                prompts=tuple(PROMPTS[:2]), tokens=8, cache_dir=str(tmp_path / "cache"))
    art = quantize_lm(src, tmp_path / "int4", options)
    import onnx

    graph = onnx.load(str(art.model_file), load_external_data=False).graph
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"}
    producers = {o: n for n in graph.node for o in n.output}
    head = producers["logits"]
    while head.op_type != "MatMulNBits":
        head = producers[head.input[0]]
    assert bits[head.name] == 8 and sorted(set(bits.values())) == [4, 8]   # int8 head, int4 body
    q = art.manifest["llm"]["quantization"]
    assert q["keep_fp"] == "lm_head_int8" and q["chosen"]["size_mb"] > 0 and 0 <= q["chosen"]["identical_prefix"] <= 1
    _loads_and_decodes(art)


def test_bad_options_are_one_line_errors():
    from edgekit.errors import InputError
    from edgekit.llm.quantize import LMQuantizeOptions, _check

    for bad in (LMQuantizeOptions(precision="int3"), LMQuantizeOptions(block_size=48),
                LMQuantizeOptions(accuracy_level=7), LMQuantizeOptions(keep_fp="everything"),
                LMQuantizeOptions(precision="int8", accuracy_level=1)):
        with pytest.raises(InputError) as err:
            _check(bad)
        assert "\n" not in str(err.value)


@needs_toolchain
def test_a_shortlist_of_a_source_without_q8_0_blocks_is_a_one_line_error(tmp_path):
    from edgekit.errors import InputError
    from edgekit.llm.quantize import LMQuantizeOptions, quantize_lm

    src = build_tiny_lm(tmp_path / "llama", "llama")  # random fp32 weights: no GGUF blocks to shortlist from
    with pytest.raises(InputError) as err:
        quantize_lm(src, tmp_path / "int4", LMQuantizeOptions(keep_fp="shortlist", cache_dir=str(tmp_path / "c")))
    assert "shortlist" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "int4").exists()
