"""Tiny random causal LMs (Llama, Qwen2, GPT-2) with an offline word-level tokenizer, saved as HF folders."""

from __future__ import annotations

from pathlib import Path

WORDS = ("the a of to and is was it this that film movie plot good great bad dull fun paris france capital "
         "what where who why how one two three yes no positive negative review answer question").split()
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
PROMPTS = ["what is the capital of france", "the film was great and the plot was fun", "how good is this movie"]


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def build_tiny_lm(folder: Path, arch: str = "llama", seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """Save a tiny random ``arch`` (llama | qwen2 | gpt2 | bert) causal LM with the tokenizer into ``folder``."""
    import torch
    import transformers as tf

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab = 1024  # onnxruntime-genai 0.18's builder exports a wrong graph for vocab 128 (measured: logits off by 0.3)
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "llama":
        config = tf.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                tie_word_embeddings=False, **common)
        model = tf.LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = tf.Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                tie_word_embeddings=True, **common)
        model = tf.Qwen2ForCausalLM(config)
    elif arch == "gpt2":
        config = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, **common)
        model = tf.GPT2LMHeadModel(config)
    elif arch == "bert":
        config = tf.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                               intermediate_size=2 * hidden, vocab_size=vocab)
        model = tf.BertForSequenceClassification(config)
    else:
        raise ValueError(arch)
    with torch.no_grad():  # random init gives near-uniform logits; widen them so greedy tokens are decisive
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    model.eval().save_pretrained(str(folder))
    build_tokenizer(folder)
    return folder
