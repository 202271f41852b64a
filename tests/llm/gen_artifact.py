"""A tiny random Llama (word-level tokenizer, chat template) exported by onnxruntime-genai's builder (fp32).

Shared by the runtime/gate/server tests; built once per session, in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORDS = ("the a of to and is was it this that film movie plot good great bad dull fun paris france capital "
         "what where who why how one two three yes no positive negative review answer question").split()
WORDS += [f"w{i}" for i in range(1024 - len(WORDS) - 5)]  # vocab 1024: the builder is exact there (not at ~40)
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=len(SPECIALS + WORDS), hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1,
                            eos_token_id=2, pad_token_id=2)
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():  # widen random logits so greedy picks are decisive
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    model.eval().save_pretrained(str(folder))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                      pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return folder


def export_tiny(hf: Path, out: Path) -> Path:
    """fp32 export through onnxruntime-genai's builder, plus the files edgekit's artifact layout carries."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "fp32",
           "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    done = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("config.json", "generation_config.json"):
        if (hf / name).is_file():
            (out / name).write_bytes((hf / name).read_bytes())
    cfg = json.loads((hf / "tokenizer_config.json").read_text())
    if "chat_template" not in cfg and (hf / "chat_template.jinja").is_file():
        cfg["chat_template"] = (hf / "chat_template.jinja").read_text()
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    (out / "manifest.json").write_text(json.dumps({"task": "text-generation", "precision": "fp32"}))
    return out


_BUILT: dict[str, tuple[Path, Path]] = {}  # one export per test session, shared by the test modules


def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("transformers")
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        root = tmp_path_factory.mktemp("tiny-llama")
        hf = build_tiny_llama(root / "hf")
        _BUILT[key] = (hf, export_tiny(hf, root / "onnx"))
    return _BUILT[key]
