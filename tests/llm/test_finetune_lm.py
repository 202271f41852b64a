"""edgekit.llm.finetune: LoRA SFT on a tiny random Llama, merged into a plain HF folder; masking; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from edgekit.errors import DataError, InputError, ModelError  # noqa: E402
from edgekit.llm.finetune import (IGNORE, LMFinetuneOptions, ResponseCollator, encode_example,  # noqa: E402
                                  finetune_lm, load_causal_lm, load_examples)

WORDS = ("the a of to and is was it this film movie plot good great bad dull fun review answer positive "
         "negative sentiment").split()
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "user", "assistant"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
GOOD = ["the film was great", "a fun movie", "good plot", "the plot was fun and good", "great film", "fun"]
BAD = ["the film was dull", "a bad movie", "dull plot", "the plot was bad and dull", "bad film", "dull"]


def _tiny_llama(folder: Path) -> Path:
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    config = tf.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            bos_token_id=1, eos_token_id=4, pad_token_id=2, tie_word_embeddings=False)
    tf.LlamaForCausalLM(config).save_pretrained(str(folder))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                     eos_token="<|im_end|>", pad_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.tsv"
    rows = [("1", t) for t in GOOD] + [("0", t) for t in BAD]
    path.write_text("label\tsentence\n" + "".join(f"{lab}\t{t}\n" for lab, t in (rows * 3)[:32]))
    return path


OPTS = dict(prompt_template="review {text} sentiment", max_steps=12, batch_size=8, lr=5e-2, rank=4, alpha=8,
            dropout=0.0, save_steps=100, warmup_ratio=0.0)


def _batch_loss(model, tokenizer, examples) -> float:
    import torch

    batch = ResponseCollator(tokenizer.pad_token_id)([encode_example(tokenizer, ex, 64) for ex in examples])
    with torch.no_grad():
        return float(model(**batch).loss)


def test_lora_lowers_loss_and_merges_into_plain_folder(base, data, tmp_path):
    import torch
    import transformers as tf
    from safetensors.torch import load_file

    o = LMFinetuneOptions(**OPTS)
    examples = load_examples(data, o)
    tokenizer, model = load_causal_lm(base, 0)
    before = _batch_loss(model, tokenizer, examples[:16])
    out = tmp_path / "ft"
    m = finetune_lm(base, data, out, o, eval_data=data)
    tuned = tf.AutoModelForCausalLM.from_pretrained(str(out))
    after = _batch_loss(tuned, tokenizer, examples[:16])
    assert after < before, (before, after)
    assert m["steps"] == 12 and m["accuracy"] is not None and 0.0 <= m["accuracy"] <= 1.0
    merged, plain = load_file(str(out / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert set(merged) == set(plain) and not any("lora_" in k for k in merged)
    changed = [k for k in plain if "q_proj" in k and not torch.equal(merged[k], plain[k])]
    assert changed, "LoRA was not merged into the attention weights"
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["step"] == "finetune-lm"
    assert not (tmp_path / ".ft.work").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ft"]


def test_collator_masks_prompt_and_padding(base):
    tokenizer, _ = load_causal_lm(base, 0)
    o = LMFinetuneOptions(prompt_template="review {text} sentiment")
    long_ex, short_ex = _two_examples(o)
    rows = [encode_example(tokenizer, ex, 64) for ex in (long_ex, short_ex)]
    batch = ResponseCollator(tokenizer.pad_token_id)(rows)
    response = tokenizer("positive", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for i, row in enumerate(rows):
        labels, mask = batch["labels"][i].tolist(), batch["attention_mask"][i].tolist()
        n, p = len(row["input_ids"]), len(row["input_ids"]) - len(response)
        assert labels[:p] == [IGNORE] * p  # prompt (chat template included)
        assert labels[p:n] == response == batch["input_ids"][i].tolist()[p:n]
        assert labels[n:] == [IGNORE] * (len(labels) - n) and mask == [1] * n + [0] * (len(mask) - n)
    assert "<|im_start|>" in tokenizer.decode(rows[0]["input_ids"])


def _two_examples(o):
    from edgekit.llm.finetune import Example

    return (Example([{"role": "user", "content": o.prompt_template.format(text="the plot was fun and good")}],
                    "positive"),
            Example([{"role": "user", "content": "fun"}], "positive"))


def test_jsonl_without_columns_is_a_data_error(base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(DataError, match="prompt/response nor messages"):
        finetune_lm(base, bad, tmp_path / "out", LMFinetuneOptions(**OPTS))
    good = tmp_path / "good.jsonl"
    good.write_text('{"messages": [{"role": "user", "content": "good film"}, {"role": "assistant", '
                    '"content": "positive"}]}\n{"prompt": "x", "response": "y"}\n')
    assert load_examples(good, LMFinetuneOptions())[0].response == "positive"
    assert not (tmp_path / "out").exists()


def test_encoder_base_is_refused(tmp_path, data):
    import transformers as tf

    enc = tmp_path / "bert"
    config = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64)
    tf.BertForSequenceClassification(config).save_pretrained(str(enc))
    with pytest.raises(ModelError, match="not a causal language model"):
        finetune_lm(enc, data, tmp_path / "out", LMFinetuneOptions(**OPTS))


def test_bad_target_modules_name_the_real_ones(base, data, tmp_path):
    o = LMFinetuneOptions(**{**OPTS, "target_modules": ("query", "v_proj")})
    with pytest.raises(ModelError, match="Unknown LoRA target module.*query") as err:
        finetune_lm(base, data, tmp_path / "out", o)
    assert "q_proj" in str(err.value) and "lm_head" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_resume_continues_from_the_last_checkpoint(base, data, tmp_path, monkeypatch):
    import edgekit.llm.finetune as ft

    out = tmp_path / "ft"
    o = LMFinetuneOptions(**{**OPTS, "max_steps": 4, "save_steps": 2})
    with pytest.raises(InputError, match="Nothing to resume"):
        finetune_lm(base, data, out, LMFinetuneOptions(**{**OPTS, "resume": True}))

    def crash(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ft, "_save", crash)
    with pytest.raises(RuntimeError):
        finetune_lm(base, data, out, o)
    assert not out.exists() and (tmp_path / ".ft.work" / "checkpoint-4").is_dir()
    monkeypatch.undo()
    m = finetune_lm(base, data, out, LMFinetuneOptions(**{**OPTS, "max_steps": 6, "resume": True}))
    assert m["steps"] == 6 and (out / "model.safetensors").is_file() and not (tmp_path / ".ft.work").exists()


def test_an_interrupt_before_the_first_checkpoint_leaves_no_work_folder(base, data, tmp_path, monkeypatch):
    """Ctrl-C before any checkpoint left an empty .OUT.work beside OUT, with nothing in it to resume."""
    import edgekit.llm.finetune as ft

    def interrupted(trainer, resume):
        (tmp_path / ".ft.work").mkdir(exist_ok=True)  # the Trainer has made its output folder by then
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune_lm(base, data, tmp_path / "ft", LMFinetuneOptions(**{**OPTS, "max_steps": 4, "save_steps": 2}))
    assert not (tmp_path / ".ft.work").exists() and not (tmp_path / "ft").exists()


def test_cli_full_finetune(base, data, tmp_path):
    from click.testing import CliRunner

    from edgekit.llm.cli_finetune import finetune_lm_cmd

    out = tmp_path / "full"
    args = [str(base), "--data", str(data), "--out", str(out), "--full", "--max-steps", "2", "--lr", "1e-3",
            "--prompt-template", "review {text} sentiment", "--label-words", "0=bad,1=good", "--json"]
    r = CliRunner().invoke(finetune_lm_cmd, args)
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["lora"] is False and m["steps"] == 2 and (out / "config.json").is_file()
    bad = CliRunner().invoke(finetune_lm_cmd, args[:-1] + ["--label-words", "nonsense"])
    assert bad.exit_code == 2 and "LABEL=WORD" in bad.output
