"""edgekit prune on tiny BERT classifiers built here: reload, export parity, identity at 0, importance, errors.

About 60-90 s on 2 idle cores (most of it the ONNX exports and the optimize run).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import build_tiny_model, read_json, requires_toolchain

from edgekit.cli import main
from edgekit.errors import InputError

pytestmark = requires_toolchain

QUICK = dict(recover_epochs=0, batch_size=8, max_length=32, importance_samples=48)


def _opts(**kw):
    from edgekit.prune import PruneOptions

    return PruneOptions(**{**QUICK, **kw})


def _load(folder):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()


def _logits(model, folder, texts):
    import torch
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.numpy()


TEXTS = ["the good film was very great .", "a boring , dull plot", "not good",
         "the acting is superb but the ending drags"]


@pytest.fixture(scope="module")
def pruned(tiny_model, tiny_data, tmp_path_factory):
    """The tiny model with half its FFN neurons and one of its two blocks removed (no recovery: fast)."""
    from edgekit.prune import prune

    out = tmp_path_factory.mktemp("pruned") / "tiny-pruned"
    metrics = prune(tiny_model, tiny_data, out, _opts(ffn=0.5, layers=1), eval_data=tiny_data)
    return out, metrics


def test_pruned_model_reloads_with_smaller_linears(pruned):
    out, metrics = pruned
    model = _load(out)
    assert model.config.intermediate_size == 32 and model.config.num_hidden_layers == 1
    layer = model.bert.encoder.layer[0]
    assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)   # physically smaller, not zeroed
    assert tuple(layer.output.dense.weight.shape) == (32, 32)
    assert len(model.bert.encoder.layer) == 1
    assert metrics["params"]["after"] < metrics["params"]["before"]
    assert metrics["params"]["after"] == sum(p.numel() for p in model.parameters())
    assert metrics["ffn"] == {"before": 64, "after": 32} and metrics["layers"]["after"] == 1
    assert read_json(out / "manifest.json")["step"] == "prune"
    assert (out / "tokenizer.json").is_file()


def test_pruned_model_exports_and_onnx_matches_pytorch(pruned, tiny_data, tmp_path):
    from edgekit.export import export
    from edgekit.runtime.session import OrtSession
    from edgekit.sessions import encoder_for

    out, _ = pruned
    art = export(out, tmp_path / "onnx", data=tiny_data)   # raises if ONNX Runtime disagrees with PyTorch
    assert art.manifest["validation"]["label_agreement"] == 1.0
    model = _load(out)
    with OrtSession(art.model_file) as sess:
        got = sess.run(sess.feeds(encoder_for(art)(TEXTS)))["logits"]
    np.testing.assert_allclose(got, _logits(model, out, TEXTS), atol=1e-4)


def test_ratio_zero_is_the_identity(tiny_model, tiny_data, tmp_path):
    from edgekit.prune import prune

    out = tmp_path / "same"
    metrics = prune(tiny_model, tiny_data, out, _opts(ffn=0.0, layers=0))
    before, after = _load(tiny_model).state_dict(), _load(out).state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert tensor.shape == after[name].shape and bool((tensor == after[name]).all()), name
    assert metrics["params"]["before"] == metrics["params"]["after"]


def test_taylor_keeps_the_neurons_that_matter(tmp_path, tiny_data):
    """Half the FFN neurons are made dead (zero output weights): Taylor must drop exactly those, changing nothing."""
    import torch

    from edgekit.prune import prune

    folder = build_tiny_model(tmp_path / "dead", seed=3)
    model = _load(folder)
    for layer in model.bert.encoder.layer:
        with torch.no_grad():
            layer.output.dense.weight[:, ::2] = 0.0          # even neurons contribute nothing
    model.save_pretrained(str(folder))
    prune(folder, tiny_data, tmp_path / "out", _opts(ffn=0.5))
    pruned = _load(tmp_path / "out")
    for old, new in zip(model.bert.encoder.layer, pruned.bert.encoder.layer):
        assert torch.equal(new.intermediate.dense.weight, old.intermediate.dense.weight[1::2])
    np.testing.assert_allclose(_logits(pruned, folder, TEXTS), _logits(model, folder, TEXTS), atol=1e-5)


def test_block_choice_follows_measured_loss_or_depth(tmp_path, tiny_data):
    """A block that computes ~nothing is what taylor's leave-one-out drops; magnitude drops the top block."""
    import torch

    from edgekit.prune import prune

    folder = build_tiny_model(tmp_path / "idle", seed=4)
    model = _load(folder)
    block = model.bert.encoder.layer[0]
    with torch.no_grad():
        for linear in (block.attention.output.dense, block.output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
    model.save_pretrained(str(folder))
    taylor = prune(folder, tiny_data, tmp_path / "taylor", _opts(layers=1))
    magnitude = prune(folder, tiny_data, tmp_path / "magnitude", _opts(layers=1, importance="magnitude"))
    assert taylor["layers"]["dropped"] == [0] and magnitude["layers"]["dropped"] == [1]


@pytest.mark.parametrize("flags, needle", [
    (["--ffn", "-0.1"], "Invalid --ffn -0.1"),
    (["--ffn", "1.0"], "Invalid --ffn 1.0"),
    (["--heads", "-0.2"], "Invalid --heads -0.2"),
    (["--heads", "1"], "Invalid --heads 1.0"),
    (["--heads", "0.99"], "would remove all 4 heads"),
    (["--layers", "2"], "would remove every block"),
    (["--layers", "-1"], "Invalid --layers -1"),
    (["--heads", "0.5"], "Attention heads cannot be pruned from a 'bert' model"),
    (["--sparsity", "3:4"], "Invalid --sparsity '3:4'"),
    (["--importance-samples", "0"], "Invalid --importance-samples 0"),
    ([], "Nothing to prune"),   # the defaults remove nothing: refused rather than a recovery of the whole model
])
def test_invalid_ratios_give_one_line_errors(tiny_model, tiny_data, tmp_path, flags, needle):
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["prune", str(tiny_model), "--data", str(tiny_data), "--out", str(out), *flags])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], result.stderr
    assert not out.exists()


def test_invalid_ratio_in_the_library_raises_input_error(tiny_model, tiny_data, tmp_path):
    from edgekit.prune import prune

    with pytest.raises(InputError, match="share of units removed"):
        prune(tiny_model, tiny_data, tmp_path / "x", _opts(ffn=1.5))


def test_recovery_trains_the_pruned_model(tiny_model, tiny_data, tmp_path):
    from edgekit.prune import prune

    m = prune(tiny_model, tiny_data, tmp_path / "rec", _opts(ffn=0.5, recover_epochs=10, lr=5e-3, distill=False),
              eval_data=tiny_data)
    assert m["recovery"]["steps"] == 60 and m["recovery"]["distill"] is False
    assert m["pruned_accuracy"] <= 0.75 and m["accuracy"] >= 0.9   # the tiny task is learned: weights really move


def test_distill_loss_terms():
    import torch

    from edgekit.prune import distill_loss

    class Out:
        logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])

    labels = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.5, 0.3]])   # [class id, teacher logits...]
    ce = torch.nn.functional.cross_entropy(Out.logits, torch.tensor([0, 1]))
    assert torch.isclose(distill_loss(Out, labels, temperature=2.0, weight=0.0), ce)
    assert float(distill_loss(Out, labels, temperature=2.0, weight=1.0)) == pytest.approx(0.0, abs=1e-6)
    other = torch.tensor([[0.0, -1.0, 2.0], [1.0, 0.3, 0.5]])
    assert float(distill_loss(Out, other, temperature=2.0, weight=1.0)) > 0.1


def test_sparsity_2_4_survives_recovery_and_reload(tiny_model, tiny_data, tmp_path):
    from edgekit.prune import prune
    from edgekit.sparsity import parse_sparsity, sparse_linears, sparsity_report

    m = prune(tiny_model, tiny_data, tmp_path / "sparse", _opts(ffn=0.5, sparsity="2:4", recover_epochs=1, lr=1e-3))
    assert m["sparsity"]["holds_2_4"] is True and m["sparsity"]["zeros"] == pytest.approx(0.5)
    model = _load(tmp_path / "sparse")
    report = sparsity_report(model, parse_sparsity("2:4"))
    assert report["holds_2_4"] is True and report["zeros"] == pytest.approx(0.5)
    assert "bert.encoder.layer.0.attention.self.query" in sparse_linears(model)
    assert "classifier" not in " ".join(sparse_linears(model))      # the head stays dense


def test_unstructured_sparsity_hits_its_ratio(tiny_model):
    from edgekit.sparsity import apply_masks, parse_sparsity, sparsity_masks, sparsity_report

    model = _load(tiny_model)
    spec = parse_sparsity("unstructured:0.7")
    apply_masks(model, sparsity_masks(model, spec))
    assert sparsity_report(model, spec)["zeros"] == pytest.approx(0.7, abs=0.01)


def test_cli_prune_prints_a_summary_and_json(tiny_model, tiny_data, tmp_path):
    args = ["prune", str(tiny_model), "--data", str(tiny_data), "--ffn", "0.25", "--recover-epochs", "0",
            "--importance-samples", "16", "--batch-size", "8"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.stderr
    assert "FFN 64 -> 48 per layer" in result.stdout and "Saved to" in result.stdout
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--json", "--eval-data", str(tiny_data)])
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["ffn"]["after"] == 48 and 0 <= metrics["accuracy"] <= 1 and metrics["cpu_seconds"] > 0


def test_optimize_reports_the_prune_stage(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "opt"
    result = CliRunner().invoke(main, ["optimize", str(tiny_model), "--data", str(tiny_data), "--out", str(out),
                                       "--prune-ffn", "0.5", "--prune-data", str(tiny_data),
                                       "--prune-recover-epochs", "0", "--iterations", "5", "--warmup", "1",
                                       "--max-accuracy-drop", "0.99", "--no-cache"])
    assert result.exit_code == 0, result.stderr
    report = read_json(out / "report.json")
    stage = next(s for s in report["stages"] if s["name"] == "prune")
    assert stage["ffn"] == {"before": 64, "after": 32} and 0 <= stage["accuracy"] <= 1
    assert stage["latency_ms"]["p50"] > 0 and stage["backend"] == "pytorch"
    assert [s["name"] for s in report["stages"]][:2] == ["prune", "export"]
    assert read_json(out / "config.json")["intermediate_size"] == 32   # the shipped int8 model is the pruned one


def test_optimize_prune_needs_training_data(tiny_model, tiny_data, tmp_path):
    result = CliRunner().invoke(main, ["optimize", str(tiny_model), "--data", str(tiny_data), "--out",
                                       str(tmp_path / "o"), "--prune-ffn", "0.5", "--no-cache"])
    assert result.exit_code == 1 and "Pruning needs training data" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model_type", ["roberta", "electra", "deberta-v2"])
def test_other_bert_family_types_prune_and_reload(model_type, tmp_path):
    """The structural internals on tiny RoBERTa / ELECTRA / DeBERTa-v2 classifiers: identity at 0, reload after cuts."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from edgekit import prune_structured as ps

    config = AutoConfig.for_model(model_type, vocab_size=99, hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                  num_labels=2, **({"embedding_size": 32} if model_type == "electra" else {}))
    config.architectures = [AutoModelForSequenceClassification.from_config(config).__class__.__name__]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.randint(5, 99, (4, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0])}
    same = ps.rebuild(config, ps.pruned_state(model, [0, 1, 2], None))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.inference_mode():
        assert torch.equal(same(**inputs).logits, model(**inputs).logits)
    dropped = ps.layers_to_drop(model, [batch], 1)
    kept_ffn = ps.keep_top(ps.taylor_ffn_importance(model, [batch]), 24)
    small = copy.deepcopy(config)
    small.num_hidden_layers, small.intermediate_size = 2, 24
    pruned = ps.rebuild(small, ps.pruned_state(model, [i for i in range(3) if i not in dropped], kept_ffn))
    pruned.save_pretrained(str(tmp_path))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    assert len(ps.encoder_layers(reloaded)) == 2
    assert ps.encoder_layers(reloaded)[0].intermediate.dense.out_features == 24
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(**inputs).logits, pruned(**inputs).logits)


@pytest.mark.parametrize("model_type", ["gpt2", "distilbert"])
def test_unsupported_layouts_are_refused_in_one_line_naming_the_supported(model_type):
    from transformers import AutoConfig

    from edgekit import prune_structured as ps
    from edgekit.errors import ModelError

    with pytest.raises(ModelError) as err:
        ps.layout_of(AutoConfig.for_model(model_type))
    message = str(err.value)
    assert f"'{model_type}'" in message and "\n" not in message
    assert all(t in message for t in ("bert", "roberta", "deberta-v2"))
