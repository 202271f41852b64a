"""KV-cache export of tiny random causal LMs: 8 greedy tokens and logits equal to PyTorch's, and the artifact layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import PROMPTS, build_tiny_lm  # noqa: E402

pytest.importorskip("torch", reason="toolchain extra (torch) not installed")
pytest.importorskip("transformers", reason="toolchain extra (transformers) not installed")
needs_genai = pytest.mark.skipif(pytest.importorskip("importlib.util").find_spec("onnxruntime_genai") is None,
                                 reason="onnxruntime-genai (edgekit[llm]) not installed: builder route untested")


def _export(tmp_path: Path, arch: str, route: str):
    from edgekit.llm.export import LMExportOptions, export_lm

    src = build_tiny_lm(tmp_path / f"{arch}-src", arch)
    options = LMExportOptions(route=route, validation_tokens=8, prompts=tuple(PROMPTS), atol=1e-3)
    return src, export_lm(src, tmp_path / f"{arch}-{route}", options)


def _check_parity_independently(src: Path, art) -> None:
    """Re-run the comparison outside export_lm: PyTorch generate() vs the numpy loop, 8 tokens, one prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.llm.loop import DecoderSession, greedy

    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    prompt = [5, 9, 12, 7, 30, 11]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=2)
    expected = out.sequences[0, len(prompt):].tolist()
    got = greedy(DecoderSession(art.model_file), prompt, 8, keep_logits=True)
    assert got.tokens == expected
    diff = max(float(np.abs(a - b[0].numpy()).max()) for a, b in zip(got.logits, out.logits))
    assert diff < 1e-3


def _check_layout(art, route: str) -> None:
    names = {p.name for p in art.path.iterdir()}
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json", "config.json",
            "manifest.json"} <= names
    m = art.manifest
    assert m["task"] == "text-generation" and m["precision"] == "fp32" and m["route"] == route
    assert m["validation"]["greedy_agreement"] == 1.0 and m["validation"]["tokens"] == 8
    llm = m["llm"]
    assert llm["num_layers"] == 2 and llm["eos_token_ids"] == [2] and llm["past_pattern"] == "past_key_values.{i}.{kv}"
    assert json.loads((art.path / "tokenizer_config.json").read_text()).get("chat_template")


@needs_genai
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_builder_export_matches_pytorch(tmp_path, arch):
    src, art = _export(tmp_path, arch, "builder")
    _check_layout(art, "builder")
    _check_parity_independently(src, art)


@needs_genai
def test_builder_export_takes_relative_paths(tmp_path):
    """The builder runs in a work folder of its own: a relative MODEL was read there as a hub id (an offline
    hub-token error), and a relative --out would have been written there."""
    import subprocess

    build_tiny_lm(tmp_path / "src", "llama")
    done = subprocess.run([sys.executable, "-m", "edgekit", "export-lm", "src", "--out", "out", "--route", "builder",
                           "--validation-tokens", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["route"] == "builder"
    assert (tmp_path / "out" / "model.onnx").is_file()


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    """One dynamo export of tiny GPT-2 shared by the tests below (each export takes a while on 2 cores)."""
    return _export(tmp_path_factory.mktemp("gpt2"), "gpt2", "dynamo")


def test_dynamo_export_gpt2_matches_pytorch(gpt2_export):
    src, art = gpt2_export
    _check_layout(art, "dynamo")
    assert "position_ids" in art.manifest["llm"]["inputs"]
    _check_parity_independently(src, art)


def test_dynamo_graph_takes_batch_and_past_axes(gpt2_export):
    """Batch 2 with left padding through the exported graph gives each row's batch-1 logits."""
    from edgekit.llm.loop import DecoderSession

    _, art = gpt2_export
    dec = DecoderSession(art.model_file)
    a, b = [5, 6, 7, 8], [9, 10]
    single = [dec.forward(np.array([p]), np.ones((1, len(p)), dtype=np.int64), dec.empty_cache(1))[0][0, -1]
              for p in (a, b)]
    ids = np.array([a, [2, 2] + b])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    logits, past = dec.forward(ids, mask, dec.empty_cache(2))
    assert np.abs(logits[0, -1] - single[0]).max() < 1e-4
    assert np.abs(logits[1, -1] - single[1]).max() < 1e-4
    step, _ = dec.forward(np.array([[3], [3]]), np.concatenate([mask, [[1], [1]]], axis=1), past)
    assert step.shape[:2] == (2, 1)


def test_divergent_graph_is_refused_in_one_line(gpt2_export, tmp_path):
    """A graph whose weights differ from the source's fails validation with a one-line error."""
    from edgekit.llm.validate import LMValidationError, validate_lm

    src, art = gpt2_export
    other = build_tiny_lm(tmp_path / "other", "gpt2", seed=1)
    with pytest.raises(LMValidationError) as err:
        validate_lm(other, art.model_file, tuple(PROMPTS), 8, 1e-3)
    assert "\n" not in str(err.value) and "greedy tokens diverge" in str(err.value)
