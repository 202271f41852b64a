"""The causal-LM gate's measures on known inputs and on a tiny Llama against its own fp32 export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from gen_artifact import tiny_pair  # noqa: E402

from edgekit.llm.gate import LMGateOptions, greedy_agreement, perplexity, run_gate, task_accuracy  # noqa: E402
from edgekit.llm.prompts import template  # noqa: E402


class Scripted:
    """A stand-in model with fixed logits: the measures' arithmetic checked against hand-computed values."""

    name = "scripted"

    def __init__(self, logits_fn, answers=None):
        self.logits_fn, self.answers = logits_fn, answers or {}

    def logits(self, ids):
        return self.logits_fn(ids)

    def greedy(self, ids, n):
        return list(self.answers.get(tuple(ids), [1] * n))[:n]

    def encode(self, messages):
        return [len(messages[0]["content"]) % 7 + 3]

    def decode(self, ids):
        return " ".join({5: "Positive!", 6: "negative", 7: "maybe"}.get(i, "x") for i in ids)


def test_perplexity_of_uniform_logits_is_vocab_size():
    lm = Scripted(lambda ids: np.zeros((len(ids), 50)))
    assert perplexity(lm, list(range(40)), window=16) == pytest.approx(50.0)


def test_perplexity_of_certain_model_is_one():
    def sure(ids):
        out = np.full((len(ids), 10), -1e4)
        out[np.arange(len(ids) - 1), ids[1:]] = 0.0
        return out
    assert perplexity(Scripted(sure), [1, 2, 3, 4, 5, 6, 7, 8], window=4) == pytest.approx(1.0)


def test_parse_and_task_accuracy():
    t = template("oneword")
    assert t.parse("The sentiment of this review is negative.") == 0
    assert t.parse("Positive") == 1 and t.parse("I cannot say") is None
    texts = ["good film", "bad!", "so so film"]  # distinct scripted ids
    ids = [Scripted(None).encode(t.messages(x)) for x in texts]
    lm = Scripted(None, {tuple(ids[0]): [5], tuple(ids[1]): [5], tuple(ids[2]): [7]})
    acc = task_accuracy([lm], t, texts, [1, 0, 0], answer_tokens=1)["scripted"]
    assert acc["accuracy"] == pytest.approx(1 / 3) and acc["unparsed"] == 1


def test_a_custom_template_keeps_every_brace_but_text():
    t = template('Classify {text} as {label}; reply {"answer": "..."}')
    assert t.question("  a fine film ") == 'Classify a fine film as {label}; reply {"answer": "..."}'


def test_agreement_counts_teacher_forced_top1():
    ref = Scripted(None, {(3,): [4, 5, 6, 7]})
    ref.name = "original"

    def half_right(ids):  # after prompt [3]: picks 4, 5 (right) then 9, 9 (wrong)
        out = np.zeros((len(ids), 10))
        for i, tok in enumerate([4, 5, 9, 9, 9]):
            out[i, tok] = 1.0
        return out
    art = Scripted(half_right, {(3,): [4, 5, 9, 9]})
    got = greedy_agreement(ref, art, [[3]], 4)
    assert got["teacher_forced"] == 0.5 and got["mean_identical_prefix"] == 2 and got["identical_sequences"] == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_pair(tmp_path_factory)


def test_gate_passes_fp32_export_against_its_original(tiny, tmp_path):
    from edgekit.llm.scorers import ArtifactLM, TorchLM

    hf, art = tiny
    held = tmp_path / "held.txt"
    held.write_text("the film was great and the plot was fun\nthe movie was bad and dull\n" * 10)
    texts = ["the film was great", "the plot was dull", "good fun", "bad movie"]
    original, artifact = TorchLM(hf, 1, [2]), ArtifactLM(art, 1, "ort")
    report = run_gate(original, artifact, texts, [1, 0, 1, 0],
                      LMGateOptions(rows=4, agreement_prompts=2, ppl_tokens=64, ppl_window=16), held)
    assert report["passed"], report["checks"]
    assert report["agreement"]["teacher_forced"] == 1.0
    assert report["perplexity"]["artifact"] == pytest.approx(report["perplexity"]["original"], rel=1e-3)
    assert report["accuracy"]["original"]["answers"] == report["accuracy"]["artifact"]["answers"]


def test_the_original_decodes_by_argmax_whatever_its_generation_config_asks(tiny, tmp_path):
    """generate() applied generation_config.json's repetition penalty to the original only: an exact fp32 export of
    a model shipping repetition_penalty 1.3 was scored at 0.33 greedy agreement."""
    import json
    import shutil

    import torch

    from edgekit.llm.scorers import ArtifactLM, TorchLM

    hf, art = tiny
    penalised = shutil.copytree(hf, tmp_path / "penalised")
    (penalised / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2}))
    original, artifact = TorchLM(penalised, 1, [2]), ArtifactLM(art, 1, "ort")
    prompts = [[1, 7, 8, 9], [1, 12, 5, 12, 5], [1, 30, 31]]
    with torch.inference_mode():  # what generate() answers with the file's penalty: the test's power
        penalised_answers = [original.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                                     pad_token_id=2)[0, len(ids):].tolist() for ids in prompts]
    answers = [original.greedy(ids, 12) for ids in prompts]
    assert answers == [artifact.greedy(ids, 12) for ids in prompts]
    assert answers != [a[:len(b)] for a, b in zip(penalised_answers, answers)]


@pytest.mark.parametrize("name,body", [
    ("sentence-first.tsv", "sentence\tlabel\nthe film was great\t1\nthe plot was dull\t0\n"),
    ("rows.csv", "label,sentence\n1,the film was great\n0,the plot was dull\n"),
    ("rows.jsonl", '{"label": 1, "sentence": "the film was great"}\n{"label": 0, "sentence": "the plot was dull"}\n'),
    ("plain.txt", "the film was great\nthe plot was dull\n"),
])
def test_held_out_text_is_the_text_column_in_any_layout(tmp_path, name, body):
    """Perplexity and the bench prompt took whatever followed a line's first tab: a sentence<TAB>label file scored
    its labels (' 1', ' 0', ...), a .csv its header and label column."""
    from edgekit.llm.bench import bench_prompt
    from edgekit.llm.gate import held_out_texts
    from tiny_lm import build_tokenizer

    path = tmp_path / name
    path.write_text(body)
    assert held_out_texts(path) == ["the film was great", "the plot was dull"]
    build_tokenizer(tmp_path / "tok")
    assert bench_prompt(tmp_path / "tok" / "tokenizer.json", path, 6) == "the film was great the plot"


def test_gate_fails_a_broken_artifact(tiny, tmp_path):
    """A different random model in the artifact's place must fail agreement and perplexity."""
    from gen_artifact import build_tiny_llama

    from edgekit.llm.scorers import ArtifactLM, TorchLM

    hf, art = tiny
    other = build_tiny_llama(tmp_path / "other", seed=1)
    held = tmp_path / "held.txt"
    held.write_text("the film was great and the plot was fun\n" * 20)
    report = run_gate(TorchLM(other, 1, [2]), ArtifactLM(art, 1, "ort"), ["the film", "bad"], [1, 0],
                      LMGateOptions(rows=2, agreement_prompts=2, ppl_tokens=64, ppl_window=16), held)
    assert not report["passed"]
    assert not next(c for c in report["checks"] if c["name"] == "greedy_agreement")["passed"]


def test_memo_keeps_answers_between_runs_and_distrusts_a_damaged_file(tmp_path):
    from edgekit.llm.scorers import MemoLM

    class Counting:
        name, calls = "original", 0

        def greedy(self, ids, n):
            Counting.calls += 1
            return [sum(ids) % 7] * n

    store = tmp_path / "answers.json"
    first = MemoLM(Counting(), store)
    assert first.greedy([1, 2], 3) == [3, 3, 3] and first.greedy([1, 2], 3) == [3, 3, 3]
    assert Counting.calls == 1 and first.reused == 0  # remembered within the run, not from an earlier one
    first.save()
    second = MemoLM(Counting(), store)
    assert second.greedy([1, 2], 3) == [3, 3, 3] and Counting.calls == 1 and second.reused == 1
    assert second.greedy([1, 2], 4) == [3] * 4 and Counting.calls == 2  # another length is another answer
    store.write_text("{not json")
    assert MemoLM(Counting(), store).greedy([1, 2], 3) == [3, 3, 3] and Counting.calls == 3


def test_optimize_lm_writes_report_and_fails_with_exit_3(tiny, tmp_path, capsys):
    import json

    pytest.importorskip("edgekit.llm.source", reason="edgekit.llm.source (llmA's sources) not on this branch")
    from edgekit.errors import GateFailedError
    from edgekit.llm.pipeline import LMOptimizeOptions, optimize_lm

    hf, art = tiny
    data = tmp_path / "dev.tsv"
    data.write_text("label\tsentence\n1\tthe film was great\n0\tthe plot was dull\n1\tgood fun\n0\tbad movie\n")
    (tmp_path / "train.tsv").write_text("label\tsentence\n" + "1\tthe film was great and the plot was fun\n" * 20)
    small = dict(rows=4, agreement_prompts=2, ppl_tokens=64, ppl_window=16)
    report = optimize_lm(hf, data, tmp_path / "ok", LMOptimizeOptions(
        artifact=str(art), threads=1, skip_bench=True, gate=LMGateOptions(**small)))
    assert report["passed"] and json.loads((tmp_path / "ok" / "report.json").read_text())["passed"]
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["task"] == "text-generation"
    # the given artifact is an fp32 export: it was labelled int4 (the --precision default) in report and manifest
    assert report["optimized"]["precision"] == manifest["precision"] == "fp32"
    from edgekit.runtime.generate import load_generator
    assert load_generator(tmp_path / "ok", engine="ort").generate("the film", max_new_tokens=3)
    with pytest.raises(GateFailedError) as err:
        optimize_lm(hf, data, tmp_path / "strict", LMOptimizeOptions(
            artifact=str(art), threads=1, skip_bench=True, gate=LMGateOptions(**small, min_agreement=1.01)))
    assert err.value.exit_code == 3 and "greedy_agreement" in err.value.message
    strict = json.loads((tmp_path / "strict" / "report.json").read_text())
    assert strict["passed"] is False
    assert "of the original's answers from an earlier run (step cache)" in capsys.readouterr().err  # not recomputed
    assert strict["llm"]["gate"]["accuracy"]["original"] == report["llm"]["gate"]["accuracy"]["original"]


def test_optimize_lm_refuses_a_model_without_a_chat_template_before_any_step(tiny, tmp_path):
    """The gate's chat messages failed after the export and quantization, with the runtime's fix (chat=False)."""
    import json
    import shutil

    from edgekit.errors import InputError
    from edgekit.llm.pipeline import LMOptimizeOptions, optimize_lm

    hf, _ = tiny
    plain = shutil.copytree(hf, tmp_path / "plain")
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    data = tmp_path / "dev.tsv"
    data.write_text("label\tsentence\n1\tthe film was great\n0\tthe plot was dull\n")
    (tmp_path / "train.tsv").write_text("label\tsentence\n1\tthe film was great\n")
    with pytest.raises(InputError, match="has no chat template"):
        optimize_lm(plain, data, tmp_path / "out", LMOptimizeOptions(threads=1, skip_bench=True))
    assert not (tmp_path / "out").exists()


def test_optimize_lm_refuses_an_artifact_made_from_another_model(tiny, tmp_path):
    """A GPT-2 artifact was gated against a Llama: the two sides' token ids compared as if they were one model's."""
    import json
    import shutil

    from tokenizers import Tokenizer

    from edgekit.errors import InputError
    from edgekit.llm.pipeline import LMOptimizeOptions, optimize_lm

    hf, art = tiny
    other = shutil.copytree(art, tmp_path / "other")
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[5:7]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # the same tokens, two of them with other ids
    (other / "tokenizer.json").write_text(json.dumps(tok))
    assert Tokenizer.from_file(str(other / "tokenizer.json")).get_vocab() != \
        Tokenizer.from_file(str(hf / "tokenizer.json")).get_vocab()
    data = tmp_path / "dev.tsv"
    data.write_text("label\tsentence\n1\tthe film was great\n0\tthe plot was dull\n")
    (tmp_path / "train.tsv").write_text("label\tsentence\n1\tthe film was great\n")
    with pytest.raises(InputError, match="has another tokenizer"):
        optimize_lm(hf, data, tmp_path / "out", LMOptimizeOptions(artifact=str(other), threads=1, skip_bench=True))
    assert not (tmp_path / "out").exists()


def test_optimize_lm_falls_back_to_more_precision_while_the_gate_fails(tiny, tmp_path):
    """An impossible budget fails every trial: each more precise int4 setting is quantized and gated in turn, the
    one with the smallest accuracy drop is kept, the trials are in the report, and no trial folder is left behind."""
    import json

    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai's model builder not installed")
    from edgekit.errors import GateFailedError
    from edgekit.llm.pipeline import FALLBACK_ORDER, LMOptimizeOptions, optimize_lm

    hf, _ = tiny
    data = tmp_path / "dev.tsv"
    data.write_text("label\tsentence\n1\tthe film was great\n0\tthe plot was dull\n")
    (tmp_path / "train.tsv").write_text("label\tsentence\n" + "1\tthe film was great and the plot was fun\n" * 20)
    out = tmp_path / "opt"
    with pytest.raises(GateFailedError):
        optimize_lm(hf, data, out, LMOptimizeOptions(threads=1, skip_bench=True, awq=False, gate=LMGateOptions(
            rows=2, agreement_prompts=2, ppl_tokens=64, ppl_window=16, min_agreement=1.01)))
    report = json.loads((out / "report.json").read_text())
    trials = report["llm"]["fallback"]
    keeps = [t["keep_fp"] for t in trials]
    assert keeps == list(FALLBACK_ORDER[FALLBACK_ORDER.index(keeps[0]):]) and len(keeps) >= 2
    assert all(not t.get("passed") for t in trials)
    built = [t for t in trials if "error" not in t]
    kept = [t for t in built if t["kept"]]  # none passes: the smallest accuracy drop, the earliest on a tie
    best = min(t["checks"]["accuracy_drop_points"] for t in built)
    assert len(kept) == 1 and kept[0] == next(t for t in built if t["checks"]["accuracy_drop_points"] == best)
    assert report["llm"]["quantization"]["keep_fp"] == kept[0]["keep_fp"]
    assert not [p for p in out.iterdir() if p.name.startswith(".fallback")]
    assert "Fallback trial keep_fp=" in (out / "report.md").read_text()


def test_awq_calibration_prompts_are_never_scored_rows(tmp_path):
    from edgekit.llm.pipeline import LMOptimizeOptions, calibration_prompts

    texts = [f"review {i}" for i in range(12)]
    options = LMOptimizeOptions(calibration_rows=3, gate=LMGateOptions(rows=6, agreement_prompts=4,
                                                                       template="Review: {text}"))
    # rows 0-5 scored for accuracy, 8-11 the greedy-agreement prompts (the last ones): 6 and 7 are left
    assert calibration_prompts(options, texts) == ("Review: review 6", "Review: review 7")
    options.gate.agreement_prompts = 1
    assert calibration_prompts(options, texts) == ("Review: review 6", "Review: review 7", "Review: review 8")
    options.gate.rows = None  # every row scored: nothing left (quantize-lm then uses its built-in prompts)
    assert calibration_prompts(options, texts) == ()
    own = tmp_path / "calib.tsv"
    own.write_text("label\tsentence\n1\tfine film\n0\tdull plot\n")
    options.calibration_data = str(own)
    assert calibration_prompts(options, texts) == ("Review: fine film", "Review: dull plot")


def test_keep_fp_and_accuracy_level_reach_quantize_lm_and_are_cpu_only(tmp_path):
    """optimize-lm --keep-fp / --accuracy-level: passed to quantize-lm (a gate fallback still sets its own keep_fp);
    with --target tensorrt-rtx or --artifact nothing is quantized, so either flag is a one-line error."""
    from edgekit.errors import InputError
    from edgekit.llm.pipeline import LMOptimizeOptions, _check_target, quantize_options

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    options = LMOptimizeOptions(keep_fp="shortlist", accuracy_level=4)
    q = quantize_options(hf, options, [])
    assert (q.keep_fp, q.accuracy_level) == ("shortlist", 4)
    assert quantize_options(hf, options, [], keep_fp="lm_head").keep_fp == "lm_head"
    _check_target(options)
    for bad in (LMOptimizeOptions(keep_fp="shortlist", target="tensorrt-rtx"),
                LMOptimizeOptions(accuracy_level=1, artifact="somewhere")):
        with pytest.raises(InputError) as err:
            _check_target(bad)
        assert "\n" not in str(err.value)
