"""``finetune`` on a GPT-2 language model sets the pad token as users do, and the result exports and serves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import requires_toolchain
from families import build, sentences, write_tsv

pytestmark = requires_toolchain


def test_finetune_gpt2_base_sets_pad_to_eos_and_serves(tmp_path):
    from edgekit.errors import ModelError
    from edgekit.export import check_padding, export
    from edgekit.finetune import FinetuneOptions, finetune
    from edgekit.runtime import load

    base = build("gpt2-base", tmp_path / "base")
    assert json.loads((base / "config.json").read_text()).get("pad_token_id") is None
    data = write_tsv(tmp_path / "train.tsv", sentences(32))
    out = tmp_path / "ft"
    finetune(base, data, out, FinetuneOptions(epochs=1, batch_size=8, max_length=32))
    config = json.loads((out / "config.json").read_text())
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["pad_token_id"] == config["eos_token_id"]
    assert tok_config["pad_token"] == "<|endoftext|>"
    onnx = export(out, tmp_path / "onnx", data=data).path
    texts = sentences(16, seed=5)
    batched, single = load(onnx, batch_size=8), load(onnx, batch_size=1)
    assert batched.encoder.pad_id == config["pad_token_id"]
    np.testing.assert_allclose(batched.logits(texts), single.logits(texts), atol=1e-5)

    class NoPad:  # a GPT-2 classifier saved without pad_token_id is refused before export, in one line
        model_type, pad_token_id = "gpt2", None

    with pytest.raises(ModelError, match="has no pad_token_id") as err:
        check_padding(NoPad, "text-classification")
    assert "\n" not in str(err.value)
