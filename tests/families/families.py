"""Tiny models of every family edgekit serves, each with a real tokenizer built offline, saved with save_pretrained.

One factory per family: GPT-2 (byte-level BPE trained on a few sentences, pad = eos, last-token pooling),
DistilBERT (WordPiece, no token_type_ids), RoBERTa (byte-level BPE, pad id 1, one token type),
DeBERTa-v2 (Unigram, no token types) and BERT token classification (WordPiece, BIO tags).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("good great fun funny gripping moving superb film movie plot acting bad boring awful dull cliches "
         "not very a an the is was it this that and but of to with long string never lets up ending").split()
NAMES = ["Alice", "Bob", "Carol", "Paris", "London", "Berlin", "Acme", "Globex"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def sentences(n: int = 48, seed: int = 0) -> list[str]:
    """Sentences of very different lengths (so batches are padded), some with capitalized names."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(WORDS, 2 + (i * 7) % 14)
        if i % 3 == 0:
            words.insert(rng.randrange(len(words)), rng.choice(NAMES))
        out.append(" ".join(words) + rng.choice([" .", " !", "", " , really ."]))
    return out


def write_tsv(path: Path, texts: list[str]) -> Path:
    path.write_text("label\tsentence\n" + "".join(f"{i % 2}\t{t}\n" for i, t in enumerate(texts)))
    return path


def _wordpiece():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, decoders

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[n.lower() for n in NAMES],
             *list("abcdefghijklmnopqrstuvwxyz,.!'"), *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok, dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _byte_level(specials: list[str], roberta: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences(200, seed=1) * 2, trainer)
    if roberta:
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")), trim_offsets=True)
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


def _unigram():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
                                      unk_token="[UNK]", show_progress=False)
    tok.train_from_iterator(sentences(200, seed=2), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return tok


def _save_tokenizer(folder: Path, tok, **special) -> None:
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, **special).save_pretrained(str(folder))


def _labels(names: list[str]) -> dict:
    return dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


SMALL = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64)


def build(family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random classifier of ``family`` saved in ``folder`` (config, safetensors, tokenizer.json)."""
    import torch
    import transformers as tf

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sentiment = _labels(["negative", "positive"])
    if family == "gpt2":
        tok = _byte_level(["<|endoftext|>"], roberta=False)
        eos = tok.token_to_id("<|endoftext|>")
        # what users do: pad token = eos, and the model told so (it finds the last real token through it)
        _save_tokenizer(folder, tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>")
        config = tf.GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                               bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **sentiment)
        model = tf.GPT2ForSequenceClassification(config)
    elif family == "gpt2-base":
        # as the hub's "gpt2": a language model whose tokenizer has no pad token and whose config no pad id
        tok = _byte_level(["<|endoftext|>"], roberta=False)
        eos = tok.token_to_id("<|endoftext|>")
        _save_tokenizer(folder, tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
        config = tf.GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                               bos_token_id=eos, eos_token_id=eos)
        model = tf.GPT2LMHeadModel(config)
    elif family == "distilbert":
        tok, special = _wordpiece()
        _save_tokenizer(folder, tok, **special)
        config = tf.DistilBertConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                     max_position_embeddings=128, pad_token_id=0, **sentiment)
        model = tf.DistilBertForSequenceClassification(config)
    elif family == "roberta":
        tok = _byte_level(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], roberta=True)
        _save_tokenizer(folder, tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
        config = tf.RobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=130, type_vocab_size=1,
                                  pad_token_id=1, bos_token_id=0, eos_token_id=2, **SMALL, **sentiment)
        model = tf.RobertaForSequenceClassification(config)
    elif family == "deberta-v2":
        tok = _unigram()
        _save_tokenizer(folder, tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]",
                        mask_token="[MASK]")
        config = tf.DebertaV2Config(vocab_size=tok.get_vocab_size(), max_position_embeddings=128, type_vocab_size=0,
                                    pad_token_id=0, relative_attention=True, position_buckets=16,
                                    pos_att_type=["p2c", "c2p"], **SMALL, **sentiment)
        model = tf.DebertaV2ForSequenceClassification(config)
    elif family == "bert-ner":
        tok, special = _wordpiece()
        _save_tokenizer(folder, tok, **special)
        config = tf.BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=128, **SMALL, **_labels(TAGS))
        model = tf.BertForTokenClassification(config)
    else:
        raise ValueError(family)
    model.eval().save_pretrained(str(folder))
    return folder


FAMILIES = ("gpt2", "distilbert", "roberta", "deberta-v2", "bert-ner")


def ner_jsonl(path: Path, model_folder: Path, texts: list[str]) -> Path:
    """Words of ``texts`` tagged by the PyTorch model itself (first sub-token of each word).

    The reference then scores entity F1 = 1.0 exactly, so any drop of a candidate is its own.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification

    from edgekit.check import align_tags
    from edgekit.data import TextDataset
    from edgekit.runtime.tokenizer import TextEncoder

    model = AutoModelForTokenClassification.from_pretrained(str(model_folder)).eval()
    words = [t.split() for t in texts]
    ds = TextDataset([" ".join(w) for w in words], None, "gen", "tokens", None, None, words, None)
    encoder = TextEncoder(model_folder)
    index = align_tags(encoder, ds, [list(range(len(w))) for w in words])  # target = word index
    rows = []
    for i, w in enumerate(words):
        feeds = {k: torch.from_numpy(v) for k, v in encoder([ds.texts[i]]).items()}
        with torch.inference_mode():
            pred = model(**feeds).logits[0].argmax(-1).numpy()
        tags = ["O"] * len(w)
        for pos in np.nonzero(index[i, :len(pred)] != -100)[0]:
            tags[int(index[i, pos])] = model.config.id2label[int(pred[pos])]
        rows.append(json.dumps({"tokens": w, "ner_tags": tags}))
    path.write_text("\n".join(rows) + "\n")
    return path
