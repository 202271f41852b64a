"""Bad input through the CLI: one line on stderr, exit 1, no traceback, nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(result, code=1):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def cases(tiny_model, tiny_data, tmp_path):
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "notes.txt").write_text("not a model")
    wrong_cols = tmp_path / "wrong.tsv"
    wrong_cols.write_text("label\tbody\n1\tgood\n")
    empty = tmp_path / "empty.tsv"
    empty.write_text("label\tsentence\n")
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("label\tsentence\nneutral\tok film\n")
    a_file = tmp_path / "out_is_file"
    a_file.write_text("x")
    return {
        "missing model": [tmp_path / "nope", "--data", tiny_data],
        "not an HF model": [notmodel, "--data", tiny_data],
        "data without the named column": [tiny_model, "--data", tiny_data, "--text-column", "text"],
        "data without a text column": [tiny_model, "--data", wrong_cols],
        "empty data": [tiny_model, "--data", empty],
        "unknown labels": [tiny_model, "--data", unknown],
        "out is a file": [tiny_model, "--data", tiny_data, "--out", a_file],
        "no gate rows": [tiny_model, "--data", tiny_data, "--max-samples", "0"],
        "negative gate rows": [tiny_model, "--data", tiny_data, "--max-samples", "-3"],
    }


@pytest.mark.parametrize("case", ["missing model", "not an HF model", "data without the named column",
                                  "data without a text column", "empty data", "unknown labels", "out is a file",
                                  "no gate rows", "negative gate rows"])
def test_optimize_bad_input(cases, case, tmp_path):
    args = cases[case]
    out = tmp_path / "out"
    if "--out" not in args:
        args = [*args, "--out", out]
    result = run("optimize", *args)
    assert_one_line_error(result)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "temporary folder left behind"


@pytest.mark.parametrize("flag,value", [("--max-samples", "0"), ("--max-samples", "-3"), ("--batch-size", "0"),
                                        ("--threads", "0")])
def test_check_bad_counts(tiny_model, tiny_data, flag, value):
    """--max-samples 0 and --batch-size 0 raised inside numpy; -3 silently dropped three rows."""
    result = run("check", tiny_model, tiny_model, "--data", tiny_data, flag, value)
    assert_one_line_error(result)
    assert f"{flag} must be at least 1, got {value}" in result.stderr


@pytest.mark.parametrize("command", ["check", "bench", "optimize"])
def test_a_runaway_thread_count_is_refused_up_front(tiny_model, tiny_data, tmp_path, command):
    """--threads 100000: check grew past 16 GB and ignored SIGTERM; optimize died of 'can't start new thread'
    and then a segfault (exit 139)."""
    args = {"check": [tiny_model, tiny_model, "--data", tiny_data], "bench": [tiny_model],
            "optimize": [tiny_model, "--data", tiny_data, "--out", tmp_path / "out"]}[command]
    result = run(command, *args, "--threads", "100000")
    assert_one_line_error(result)
    assert "--threads must be a whole number from 1 to" in result.stderr and not (tmp_path / "out").exists()


def test_search_refuses_no_gate_rows_up_front(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "out"
    result = run("optimize", tiny_model, "--data", tiny_data, "--out", out, "--search", "--max-samples", "0")
    assert_one_line_error(result)
    assert "--max-samples must be at least 1, got 0" in result.stderr and not out.exists()


@pytest.mark.parametrize("flag,value", [("--rows", "-5"), ("--threads", "0"), ("--threads", "100000"), ("--rounds", "0"),
                                        ("--max-accuracy-drop", "-1"), ("--min-agreement", "-0.5"),
                                        ("--calibration-rows", "0"), ("--max-ppl-increase", "-1")])
def test_optimize_lm_checks_counts_and_budgets_first(tmp_path, flag, value):
    """Before the model or the data is read: these ran for minutes (or the whole job) before."""
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["optimize-lm", "pkg:not-read", "--data", str(tmp_path / "not-read.tsv"),
                                       "--out", str(out), flag, value])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: Invalid {flag} ") and not out.exists(), result.stderr


@pytest.mark.parametrize("flag,value", [("--threads", "0"), ("--threads", "100000"), ("--tokens", "0"),
                                        ("--min-agreement", "-1"),
                                        ("--calibration-rows", "0")])
def test_quantize_lm_checks_counts_first(tmp_path, flag, value):
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["quantize-lm", "pkg:not-read", "--out", str(out), flag, value])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: Invalid {flag} ") and not out.exists(), result.stderr


@pytest.mark.parametrize("command,flag", [("export-lm", "--validation-tokens"), ("quantize-lm", "--tokens")])
def test_lm_token_budgets_past_the_context_are_refused_before_the_export(tmp_path, command, flag):
    """A tiny GPT-2 with 256 positions: 300 tokens after each prompt was an IndexError traceback from PyTorch (a
    Llama's builder graph: an ONNX Runtime one about its cos_cache), after the export."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "llm"))
    from tiny_lm import build_tiny_lm

    model, out = build_tiny_lm(tmp_path / "gpt2", "gpt2"), tmp_path / "out"
    result = run(command, model, "--out", out, flag, "300")
    assert_one_line_error(result)
    assert f"{flag} 300 after a prompt of" in result.stderr and "context of 256 tokens" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("args,expected", [
    (["--mode", "static"], "--mode (quantize.mode) does not apply to a causal LM"),
    (["--precision", "fp32"], "Unknown precision 'fp32' for a causal LM on cpu"),
    (["--target", "tensorrt-rtx", "--precision", "int8"], "Unknown precision 'int8' for a causal LM on tensorrt-rtx"),
    (["--compute-capability", "8.6"], "--compute-capability applies to --target tensorrt-rtx only"),
    (["recipe: target: 5"], "Option 'target' must be a text: got 5"),  # a number: refused before any pipeline
])
def test_optimize_on_a_causal_lm_refuses_what_its_pipeline_would_not_honour(tmp_path, args, expected):
    """``optimize`` hands a causal LM to edgekit.llm: a target other than tensorrt-rtx used to become cpu, any
    precision int4 (an asked-for int8 too), and classifier options were dropped without a word."""
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path / "out"
    flags = ["pkg:not-read", "--task", "text-generation", "--data", str(tmp_path / "not-read.tsv"), "--out", str(out)]
    if args[0].startswith("recipe: "):
        recipe = tmp_path / "lm.yaml"
        recipe.write_text(f"model: pkg:not-read\ndata: not-read.tsv\nout: out\ntask: text-generation\n{args[0][8:]}\n")
        flags = ["--recipe", str(recipe)]
        args = []
    result = CliRunner().invoke(main, ["optimize", *flags, *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and not out.exists(), result.stderr


@pytest.mark.parametrize("args,expected", [
    (["quantize-lm", "pkg:not-read", "--block-sizes", ""], "No block size to measure"),
    (["optimize-lm", "pkg:not-read", "--data", "not-read.tsv", "--compute-capability", "8.6"],
     "--compute-capability applies to --target tensorrt-rtx only"),
    # each below was ignored, or refused only after the export and the AWQ fit
    (["optimize-lm", "pkg:not-read", "--data", "not-read.tsv", "--keep-lm-head"],
     "--keep-lm-head applies to --target tensorrt-rtx --precision int4 only"),
    (["optimize-lm", "pkg:not-read", "--data", "not-read.tsv", "--block-size", "64"],
     "--block-size applies to --target tensorrt-rtx --precision int4 only"),
    (["optimize-lm", "pkg:not-read", "--data", "not-read.tsv", "--target", "tensorrt-rtx", "--precision", "int4",
      "--block-size", "7"], "Unsupported int4 block size 7"),
    (["build", "pkg:not-read", "--precision", "fp16", "--block-size", "64"], "--block-size applies to --precision int4"),
    (["build", "pkg:not-read", "--precision", "int4", "--block-size", "7"], "Unsupported int4 block size 7"),
    (["build", "pkg:not-read", "--precision", "int4", "--keep-sensitive", "-1"], "--keep-sensitive must be >= 0"),
    (["build", "pkg:not-read", "--text-column", "text"], "--text-column applies to encoder engines only"),
    # accepted and ignored, exit 0
    (["quantize-lm", "pkg:not-read", "--calibration-data", "rows.tsv"], "--calibration-data does not apply here"),
    (["quantize-lm", "pkg:not-read", "--no-gptq"], "--gptq does not apply here"),
    (["quantize-lm", "pkg:not-read", "--awq", "--template", "sst2"], "--template does not apply here"),
    (["optimize-lm", "pkg:not-read", "--data", "not-read.tsv", "--precision", "int8", "--calibration-data", "r.tsv"],
     "--calibration-data applies to the int4 AWQ fit only"),
    (["optimize-lm", "pkg:not-read", "--data", "not-read.tsv", "--target", "tensorrt-rtx", "--engine", "genai"],
     "--engine genai does not apply to --target tensorrt-rtx"),
    (["finetune-lm", "pkg:not-read", "--data", "rows.jsonl", "--full", "--rank", "4"], "--rank does not apply here"),
    (["finetune-lm", "pkg:not-read", "--data", "rows.jsonl", "--eval-base"], "--eval-base does not apply here"),
    (["finetune-lm", "pkg:not-read", "--data", "rows.jsonl", "--label-words", "0=no,1=yes"],
     "--label-words does not apply here"),
    (["optimize", "pkg:not-read", "--task", "text-generation", "--data", "not-read.tsv", "--json"],
     "--json does not apply here"),
    (["optimize", "pkg:not-read", "--task", "text-generation", "--data", "not-read.tsv", "--search"],
     "--search does not apply here"),
])
def test_lm_commands_refuse_options_that_would_do_nothing(tmp_path, args, expected):
    """An empty --block-sizes reached "nothing was measured" after the PyTorch reference was built; a compute
    capability for a CPU run was dropped without a word."""
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and not out.exists(), result.stderr


def test_subset_refuses_no_rows():
    from edgekit.data import TextDataset
    from edgekit.errors import DataError

    ds = TextDataset(["a", "b", "c"], ["0", "1", "0"], "rows.tsv", "sentence", "label")
    assert len(ds.subset(2)) == 2 and ds.subset(None) is ds and ds.subset(5) is ds
    for n in (0, -1):
        with pytest.raises(DataError, match=f"A subset of {n} rows of rows.tsv"):
            ds.subset(n)


def test_usage_error_exits_2(tmp_path):
    result = run("optimize", "--data", "x.tsv")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_gate_failure_exits_3_and_keeps_marked_artifact(tiny_model, tmp_path):
    """Labels = the original's own predictions on near-tied logits, so int8 noise must cost accuracy."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from conftest import read_json
    from edgekit.hf import TorchSession
    from edgekit.runtime.tokenizer import TextEncoder

    tied = tmp_path / "tied"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    with torch.no_grad():
        w = model.classifier.weight
        w[1] = w[0] + 1e-3 * w[1]  # two nearly identical rows: logits almost tied
        model.classifier.bias.zero_()
    model.save_pretrained(tied)
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special", "vocab")):
            (tied / f.name).write_bytes(f.read_bytes())
    words = "good great fun bad dull awful film plot acting movie long boring superb gripping".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 12))) for _ in range(200)]
    with TorchSession(tied) as sess:
        preds = sess.run(sess.feeds(TextEncoder(tied)(texts)))["logits"].argmax(-1)
    data = tmp_path / "self.tsv"
    data.write_text("label\tsentence\n" + "".join(f"{p}\t{t}\n" for p, t in zip(preds, texts)))
    out = tmp_path / "out"
    result = run("optimize", tied, "--data", data, "--out", out, "--max-accuracy-drop", "0", "--iterations", "5",
                 "--quiet", "--json")  # stage lines off: the error itself is one line
    assert_one_line_error(result, code=3)
    assert "Accuracy gate failed" in result.stderr
    report = read_json(out / "report.json")
    assert report["passed"] is False and report["accuracy_drop"] > 0
    assert json.loads(result.stdout) == report  # --json printed nothing for a failed gate
    assert read_json(out / "manifest.json")["passed"] is False
    assert (out / "model.onnx").is_file()


@pytest.mark.parametrize("case", ["export atol nan", "export head mismatch", "optimize eval batch 0",
                                  "optimize export samples 0", "bench min-seconds nan", "check data without suffix",
                                  "build max-seq past the model", "optimize end-to-end"])
def test_numbers_and_mismatches_are_refused_before_any_work(tiny_model, tiny_onnx, tiny_data, tmp_path, case):
    """Each ran the whole step and failed late (export with --atol nan), ran with a silently changed meaning
    (--eval-batch-size 0 as the default, a sequence classifier's head put on every token, a 100000-token engine
    profile for a 512-position model), or blamed a missing optional package for a missing file."""
    out = tmp_path / "out"
    args, expected = {
        "export atol nan": (["export", tiny_model, "--out", out, "--atol", "nan"], "--atol must be a finite number"),
        "export head mismatch": (["export", tiny_model, "--out", out, "--task", "token-classification"],
                                 "--task token-classification does not match"),
        "optimize eval batch 0": (["optimize", tiny_model, "--data", tiny_data, "--out", out, "--eval-batch-size", "0"],
                                  "--eval-batch-size must be at least 1"),
        "optimize export samples 0": (["optimize", tiny_model, "--data", tiny_data, "--out", out, "--export-samples",
                                       "0"], "--export-samples must be at least 1"),
        "bench min-seconds nan": (["bench", tiny_onnx, "--min-seconds", "nan"], "must be >= 0"),
        "check data without suffix": (["check", tiny_model, tiny_onnx, "--data", tmp_path / "rows"], "not found"),
        "build max-seq past the model": (["build", tiny_onnx, "--out", out, "--max-seq", "100000"],
                                         "is longer than the model's"),
        "optimize end-to-end": (["optimize", tiny_model, "--data", tiny_data, "--out", out, "--end-to-end"],
                                "--end-to-end does not apply to optimize"),  # failed at bench, after the rest
    }[case]
    if case.startswith("build"):
        pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed")
    result = run(*args)
    assert_one_line_error(result)
    assert expected in result.stderr and not out.exists(), result.stderr


BEYOND_MEMORY = "1000000000"  # a billion rows: terabytes of activations even for the tiny model


@pytest.mark.parametrize("command", ["bench", "bench pair", "optimize"])
def test_a_batch_past_this_machines_memory_is_refused_before_any_work(tiny_model, tiny_onnx, tiny_data, tmp_path,
                                                                     command):
    """`bench --batch-size 100000` on the reference model was killed for lack of memory with no message (exit
    137); optimize got there after export, quantize and check."""
    out = tmp_path / "out"
    args = {"bench": ["bench", tiny_onnx, "--batch-size", BEYOND_MEMORY],
            "bench pair": ["bench", tiny_model, tiny_onnx, "--batch-size", BEYOND_MEMORY],
            "optimize": ["optimize", tiny_model, "--data", tiny_data, "--out", out, "--batch-size", BEYOND_MEMORY],
            }[command]
    result = run(*args, timeout=120)
    assert_one_line_error(result)
    assert "GiB is available; the run would be killed for lack of memory" in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("command,flag,value,expected", [
    ("finetune", "--epochs", "inf", "Invalid --epochs inf"),       # an OverflowError traceback in the Trainer
    ("finetune", "--epochs", "1e300", "Invalid --epochs 1e+300"),  # ran silently until killed
    ("finetune", "--max-length", "100000", "longer than the model's"),  # a RuntimeError traceback mid-training
    ("prune", "--recover-epochs", "inf", "Invalid --recover-epochs inf"),
    ("prune", "--max-length", "100000", "longer than the model's"),
])
def test_training_budgets_are_checked_before_training(tiny_model, tiny_data, tmp_path, command, flag, value, expected):
    out = tmp_path / "out"
    extra = ["--ffn", "0.5"] if command == "prune" else []
    result = run(command, tiny_model, "--data", tiny_data, "--out", out, *extra, flag, value)
    assert_one_line_error(result)
    assert expected in result.stderr and not out.exists(), result.stderr


def test_prune_refuses_a_share_that_rounds_to_no_neuron(ref_model, sst2_dev, tmp_path):
    """--ffn 0.002 of 1536 neurons rounded back to 1536 (multiples of 8): "FFN 1536 -> 1536", exit 0, after a
    recovery fine-tune of the whole model."""
    result = run("prune", ref_model, "--data", sst2_dev, "--out", tmp_path / "out", "--ffn", "0.002")
    assert_one_line_error(result)
    assert "--ffn 0.002 removes no FFN neuron of 1536" in result.stderr and not (tmp_path / "out").exists()


def test_prune_refuses_single_class_data(tiny_model, tmp_path):
    """It pruned and recovered on one class, exit 0 (finetune already refused such data)."""
    one = tmp_path / "one.tsv"
    one.write_text("label\tsentence\n" + "".join(f"1\tgood film number {i}\n" for i in range(8)))
    result = run("prune", tiny_model, "--data", one, "--out", tmp_path / "out", "--ffn", "0.5")
    assert_one_line_error(result)
    assert "has a single label" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,expected", [
    (["--prune-data", "DATA", "--prune-ffn", "1.5"], "Invalid --prune-ffn 1.5"),
    (["--prune-data", "DATA", "--prune-layers", "2"], "--prune-layers 2 would remove every block"),
    # accepted and ignored without a cut: optimize PASSED with no prune stage
    (["--prune-data", "DATA", "--prune-recover-epochs", "3"],
     "--prune-recover-epochs, --prune-data apply only when optimize prunes"),
])
def test_optimize_names_its_own_prune_flags_before_any_step(tiny_model, tiny_data, tmp_path, args, expected):
    """The errors named prune's --ffn / --layers, flags optimize does not have; the layers one came after the
    export had started."""
    args = [tiny_data if a == "DATA" else a for a in args]
    result = run("optimize", tiny_model, "--data", tiny_data, "--out", tmp_path / "out", *args)
    lines = result.stderr.strip().splitlines()  # a "[edgekit] load ..." stage line may come first (a slow load)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "export" not in result.stderr
    assert lines[-1].startswith("Error: ") and expected in lines[-1] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,expected", [
    (["--keep-lm-head"], "--keep-lm-head does not apply here: it applies to causal-LM engines"),
    (["--block-size", "64"], "--block-size does not apply here"),
    (["--int8-base", "fp32"], "--int8-base does not apply here: it applies to --precision int8"),
    (["--text-column", "text"], "--text-column does not apply here: it names a column of --data"),
    (["--compute-capability", ","], "--compute-capability ',' names no compute capability"),
    (["--timing-cache", "t.cache"], "--timing-cache applies to classic TensorRT only"),
])
def test_an_encoder_build_refuses_options_it_would_ignore(tiny_onnx, tmp_path, args, expected):
    """Each built an engine with rc 0 and the option ignored (--timing-cache: a warning after the build)."""
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(tiny_onnx), "--out", str(out), *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and not out.exists(), result.stderr


@pytest.mark.parametrize("args", [["build", "{onnx}", "--out", ""], ["export", "{model}", "--out", " "],
                                  ["quantize", "", "--out", "{tmp}/q"], ["export-lm", "{model}", "--out", ""],
                                  ["optimize-lm", "{model}", "--data", "d.tsv", "--out", ""],
                                  ["finetune-lm", "{model}", "--data", "d.tsv", "--out", ""]])
def test_an_empty_path_is_a_usage_error(tiny_model, tiny_onnx, tmp_path, args):
    """--out '' built the engine into the working directory."""
    from click.testing import CliRunner

    from edgekit.cli import main

    paths = {"onnx": str(tiny_onnx), "model": str(tiny_model), "tmp": str(tmp_path)}
    result = CliRunner().invoke(main, [a.format(**paths) for a in args])
    assert result.exit_code == 2 and "is empty: pass a path" in result.stderr, result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["optimize-lm", "optimize"])
def test_an_unknown_compute_capability_is_refused_before_the_model_is_read(tmp_path, command):
    """It was refused at the engine step, after the export and quantization (optimize-lm: and the AWQ fit)."""
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra (tensorrt-rtx) is not installed")
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path / "out"
    model = "pkg:not-read" if command == "optimize-lm" else str(tmp_path / "not-read-model")
    result = CliRunner().invoke(main, [command, model, "--data", "not-read.tsv", "--target",
                                       "tensorrt-rtx", "--compute-capability", "9.0", "--out", str(out)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Unknown compute capability '9.0' for TensorRT-RTX" in lines[0] and not out.exists()
    # the way to classic TensorRT in this command (optimize has no --backend; decoder engines are RTX only)
    assert ("use --target tensorrt" in lines[0]) == (command == "optimize") and "--backend" not in lines[0]


def test_an_int4_decoder_engine_for_compute_capability_7_5_is_refused_before_the_model_is_read(tmp_path):
    """TensorRT-RTX's compiler refused it ("HW-specific datatypes: int4") after the export and the AWQ fit."""
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra (tensorrt-rtx) is not installed")
    from click.testing import CliRunner

    from edgekit.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["optimize-lm", "pkg:not-read", "--data", "not-read.tsv", "--target",
                                       "tensorrt-rtx", "--precision", "int4", "--compute-capability", "7.5,8.6",
                                       "--out", str(out)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "int4 decoder engines cannot target compute capability 7.5" in lines[0] and not out.exists()


def test_a_search_refused_at_its_start_leaves_no_work_folder(tiny_model, tmp_path):
    """Bad data ended a new search after it had made .OUT.search/trials beside OUT."""
    result = run("optimize", tiny_model, "--data", tmp_path / "nope.tsv", "--search", "--out", tmp_path / "s")
    assert result.returncode == 1 and "Dataset" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
