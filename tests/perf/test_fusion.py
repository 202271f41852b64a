"""The CPU artifact carries ONNX Runtime's fused transformer ops, on BERT and on other families, and they quantize."""

import json
import shutil

import numpy as np
import onnx
import pytest

from edgekit.export import ExportOptions, export
from edgekit.fusion import fused_op_counts
from edgekit.quantize import QuantizeOptions, quantize

pytest.importorskip("onnxscript.rewriter.ort_fusions")


def _family_model(tiny_model, tmp_path, family: str):
    """A tiny classifier of ``family`` sharing the tiny BERT's WordPiece tokenizer (built from a config)."""
    import torch
    import transformers

    folder = tmp_path / family
    shutil.copytree(tiny_model, folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    if family == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                               max_position_embeddings=128, num_labels=2)
        model = transformers.DistilBertForSequenceClassification(config)
    else:
        config = transformers.RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64, max_position_embeddings=160,
                                            num_labels=2, pad_token_id=0, type_vocab_size=1)
        model = transformers.RobertaForSequenceClassification(config)
    (folder / "config.json").unlink()
    model.eval().save_pretrained(str(folder))
    return folder


def _fused_and_quantized(model, data, tmp_path):
    fp32 = export(model, tmp_path / "fp32", ExportOptions(validation_samples=8), data=data)
    int8 = quantize(fp32.path, tmp_path / "int8", QuantizeOptions(target="cpu"))
    return int8, int8.manifest["steps"]["fusion"]


def _check(int8, fusion, layers=2):
    assert fusion["applied"], fusion
    counts = fusion["fused_ops"]
    assert counts.get("Attention", 0) + counts.get("MultiHeadAttention", 0) == layers, counts
    # one per residual (attention, FFN) per layer; RoBERTa's embedding sum fuses into one more
    assert 2 * layers - 1 <= counts.get("SkipLayerNormalization", 0) <= 2 * layers + 1, counts
    assert counts.get("BiasGelu", 0) + counts.get("FastGelu", 0) + counts.get("Gelu", 0) == layers, counts
    kinds = [n.op_type for n in onnx.load(str(int8.model_file)).graph.node]
    # attention's QKV projection runs in int8 too; the last layer's (a first-token head) as two int8 projections
    # feeding a one-query MultiHeadAttention (first_token.first_token_query)
    assert kinds.count("QAttention") == layers - 1 and kinds.count("MultiHeadAttention") == 1
    assert kinds.count("MatMulInteger") >= 3 * layers + 2
    assert "IsNaN" not in kinds and "Attention" not in kinds


def test_bert_attention_is_fused_and_int8(tiny_model, tiny_data, tmp_path):
    int8, fusion = _fused_and_quantized(tiny_model, tiny_data, tmp_path)
    _check(int8, fusion)
    assert fusion["tried"]["onnxscript"]["max_abs_diff"] < 1e-3


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_other_families_are_fused(family, tiny_model, tiny_data, tmp_path):
    int8, fusion = _fused_and_quantized(_family_model(tiny_model, tmp_path, family), tiny_data, tmp_path)
    _check(int8, fusion)


def test_fused_int8_agrees_with_fp32_on_padded_batches(tiny_model, tiny_data, tmp_path):
    """The rewritten mask (raw 2-D mask_index) treats padding as the unfused graph does."""
    from edgekit.runtime.session import OrtSession
    from edgekit.sessions import encoder_for

    fp32 = export(tiny_model, tmp_path / "fp32", ExportOptions(validation_samples=8), data=tiny_data)
    fused = quantize(fp32.path, tmp_path / "fused", QuantizeOptions(target="cpu", op_types=["Gemm"]))
    counts = fused_op_counts(fused.model_file)  # the last layer: the one-query MultiHeadAttention (first_token)
    assert counts.get("Attention") == 1 and counts.get("MultiHeadAttention") == 1, counts
    encoder = encoder_for(fp32)
    texts = ["a gripping, funny film that never lets up.", "meh.", "not bad at all, really quite good"]
    with OrtSession(fp32.model_file) as a, OrtSession(fused.model_file) as b:
        batch = a.feeds(encoder(texts))
        alone = [a.run(a.feeds(encoder([t])))["logits"] for t in texts]
        got = b.run(batch)["logits"]
    np.testing.assert_allclose(got, np.concatenate(alone), atol=1e-4)


def test_reference_model_is_fused(ref_model, sst2_dev, tmp_path):
    """The real MiniLM-L6 (6 layers): 6 fused Attention -> QAttention (5, the last one split for its first token's
    query), 12 SkipLayerNormalization, 6 BiasGelu."""
    fp32 = export(ref_model, tmp_path / "fp32", ExportOptions(validation_samples=16), data=sst2_dev)
    int8 = quantize(fp32.path, tmp_path / "int8", QuantizeOptions(target="cpu", mode="dynamic"))
    fusion = int8.manifest["steps"]["fusion"]
    assert fusion["fused_ops"] == {"Attention": 6, "SkipLayerNormalization": 12, "BiasGelu": 6}, fusion
    kinds = [n.op_type for n in onnx.load(str(int8.model_file)).graph.node]
    # 6 x (attention output, FFN in, FFN out) + pooler + classifier, and the last layer's query and key/value
    # projections (its attention a one-query MultiHeadAttention: first_token.first_token_query)
    assert kinds.count("QAttention") == 5 and kinds.count("MatMulInteger") == 22
