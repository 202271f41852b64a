"""Train small GPT-2 and DistilBERT SST-2 classifiers from scratch (tokenizer included), a few minutes each on CPU.

No hub weights exist on this machine, so the two model families of issue 11
are trained here from configs: a tokenizer is trained with the ``tokenizers``
library on the SST-2 train sentences, wrapped in ``PreTrainedTokenizerFast``
with the family's special tokens, and a small ``GPT2ForSequenceClassification``
/ ``DistilBertForSequenceClassification`` is trained on SST-2 train (AdamW,
linear warmup and decay, batches grouped by length) until ``--epochs`` or the
wall-time ``--budget-min`` runs out, whichever comes first (the learning rate
decays over whichever is nearer, so a budget-stopped run still ends at lr 0).
It is evaluated on all of dev.tsv and saved with ``save_pretrained`` (model +
tokenizer) plus ``train_metrics.json``.

GPT-2 is set up as Hugging Face users set up the stock ``gpt2`` checkpoint:
byte-level BPE with ``<|endoftext|>`` as the LAST id (as 50256 is in gpt2, so a
pad id that falls back to 0 is caught), pad token = eos, ``pad_token_id`` = eos
in the config, right padding (the model pools the last non-pad token).
DistilBERT: WordPiece with BertNormalizer(lowercase), [PAD]=0 [UNK] [CLS] [SEP]
[MASK], ``[CLS] text [SEP]``, no token_type_ids.

    nice -n 10 python bench/families/train.py --family gpt2 distilbert --budget-min 12

Models go to /tmp/edgekit-families/<family> (``--out`` changes the parent);
they are not committed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # edgekit from this checkout (progress lines)

from edgekit import progress  # noqa: E402

SHARED = Path(os.environ.get("EDGEKIT_SHARED", HERE.parents[1].parent / "shared"))
LABELS = {0: "negative", 1: "positive"}
EOS = "<|endoftext|>"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", nargs="+", choices=["gpt2", "distilbert"], default=["gpt2", "distilbert"])
    p.add_argument("--train", default=str(SHARED / "data" / "sst2" / "train.tsv"))
    p.add_argument("--dev", default=str(SHARED / "data" / "sst2" / "dev.tsv"))
    p.add_argument("--out", default="/tmp/edgekit-families", help="Parent folder; each family goes to <out>/<family>.")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-length", type=int, default=64, help="Training/eval truncation (tokens).")
    p.add_argument("--model-max-length", type=int, default=128, help="Position table and tokenizer limit.")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--budget-min", type=float, default=18.0, help="Wall-time budget per model for training (minutes).")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.06, help="Warmup fraction of the schedule.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def read_tsv(path: str) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row["sentence"])
            labels.append(int(row["label"]))
    return texts, labels


# ---------------------------------------------------------------- tokenizers

def gpt2_tokenizer(texts: list[str], vocab_size: int, max_len: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens([EOS])  # the last id, as 50256 in gpt2
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
                                   model_max_length=max_len, padding_side="right",
                                   model_input_names=["input_ids", "attention_mask"])


def distilbert_tokenizer(texts: list[str], vocab_size: int, max_len: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_len,
                                   padding_side="right", model_input_names=["input_ids", "attention_mask"])


# ---------------------------------------------------------------- models

def build_model(family: str, tokenizer, args):
    from transformers import (DistilBertConfig, DistilBertForSequenceClassification, GPT2Config,
                              GPT2ForSequenceClassification)

    label2id = {v: k for k, v in LABELS.items()}
    if family == "gpt2":
        eos = tokenizer.eos_token_id
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.model_max_length, n_embd=args.dim,
                            n_layer=args.layers, n_head=args.heads, bos_token_id=eos, eos_token_id=eos,
                            pad_token_id=eos, num_labels=2, id2label=LABELS, label2id=label2id)
        return GPT2ForSequenceClassification(config)
    config = DistilBertConfig(vocab_size=len(tokenizer), max_position_embeddings=args.model_max_length,
                              n_layers=args.layers, dim=args.dim, n_heads=args.heads, hidden_dim=4 * args.dim,
                              pad_token_id=tokenizer.pad_token_id, num_labels=2, id2label=LABELS, label2id=label2id)
    return DistilBertForSequenceClassification(config)


# ---------------------------------------------------------------- training

def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort within chunks of 50 batches by length, cut into batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(ids: list[list[int]], pad_id: int):
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return input_ids, mask


def lr_factor(frac: float, warmup: float) -> float:
    if frac < warmup:
        return frac / warmup
    return max(0.0, (1.0 - frac) / (1.0 - warmup))


def train(model, encoded: list[list[int]], labels: list[int], pad_id: int, args) -> dict:
    """AdamW, linear warmup/decay over min(epochs, budget) measured as progress fraction; returns run figures."""
    import torch

    rng = random.Random(args.seed)
    steps_per_epoch = math.ceil(len(encoded) / args.batch_size)
    planned = int(steps_per_epoch * args.epochs)
    budget = args.budget_min * 60.0
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    model.train()
    started, step, last_line, loss_avg, stop = time.perf_counter(), 0, time.perf_counter(), None, False
    loads = []
    with progress.Counter(planned, desc="train steps", unit="step") as counter:
        while not stop:
            for batch in length_batches([len(x) for x in encoded], args.batch_size, rng):
                elapsed = time.perf_counter() - started
                frac = max(step / planned, elapsed / budget)
                if frac >= 1.0:
                    stop = True
                    break
                for group in opt.param_groups:
                    group["lr"] = args.lr * lr_factor(frac, args.warmup)
                input_ids, mask = collate([encoded[i] for i in batch], pad_id)
                out = model(input_ids=input_ids, attention_mask=mask, labels=torch.tensor([labels[i] for i in batch]))
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                loss_avg = out.loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * out.loss.item()
                counter.update(1, postfix=f"loss {loss_avg:.3f}")
                if time.perf_counter() - last_line >= 60:
                    last_line = time.perf_counter()
                    loads.append(os.getloadavg()[0])
                    progress.echo(f"           step {step}/{planned} epoch {step / steps_per_epoch:.2f} "
                                  f"loss {loss_avg:.3f} lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f} s")
    seconds = time.perf_counter() - started
    return {"train_seconds": round(seconds, 1), "steps": step, "planned_steps": planned,
            "epochs_done": round(step / steps_per_epoch, 3), "stopped_by": "budget" if step < planned else "epochs",
            "final_loss_ema": round(loss_avg or float("nan"), 4),
            "loadavg_1min_mean": round(sum(loads) / len(loads), 2) if loads else None}


def evaluate(model, encoded: list[list[int]], labels: list[int], pad_id: int, batch_size: int) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            input_ids, mask = collate(encoded[start:start + batch_size], pad_id)
            pred = model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1).tolist()
            correct += sum(int(p == y) for p, y in zip(pred, labels[start:start + batch_size]))
    return correct / len(encoded)


# ---------------------------------------------------------------- one family

def run_family(family: str, args, train_data, dev_data) -> dict:
    import torch

    torch.manual_seed(args.seed)
    texts, labels = train_data
    make_tok = gpt2_tokenizer if family == "gpt2" else distilbert_tokenizer
    with progress.stage(f"{family}: tokenizer", f"{args.vocab_size} tokens from {len(texts)} sentences"):
        tokenizer = make_tok(texts, args.vocab_size, args.model_max_length)
        encode = lambda xs: tokenizer(xs, truncation=True, max_length=args.max_length)["input_ids"]  # noqa: E731
        train_ids, dev_ids = encode(texts), encode(dev_data[0])
    model = build_model(family, tokenizer, args)
    params = sum(p.numel() for p in model.parameters())
    detail = f"{params / 1e6:.2f} M params, <= {args.epochs} epochs or {args.budget_min} min, batch {args.batch_size}"
    with progress.stage(f"{family}: train", detail) as info:
        figures = train(model, train_ids, labels, tokenizer.pad_token_id, args)
        info["note"] = f"{figures['steps']} steps, {figures['epochs_done']} epochs"
    with progress.stage(f"{family}: evaluate", f"{len(dev_ids)} dev rows") as info:
        started = time.perf_counter()
        acc = evaluate(model, dev_ids, dev_data[1], tokenizer.pad_token_id, args.batch_size)
        info["note"] = f"accuracy {acc:.4f}"
    metrics = {"family": family, "dev_accuracy": round(acc, 4), "dev_rows": len(dev_ids),
               "eval_seconds": round(time.perf_counter() - started, 1), "train_rows": len(train_ids),
               **figures, "params": params, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
               "model_config": model.config.to_diff_dict(), "hyper": hyper(args), "machine": machine(),
               "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    save(model, tokenizer, metrics, Path(args.out) / family)
    return metrics


def save(model, tokenizer, metrics: dict, folder: Path) -> None:
    """Write into <folder>.tmp, then swap it in, so a failed run leaves no half-written model."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    progress.echo(f"[edgekit] saved {folder}")


def hyper(args) -> dict:
    keys = ["vocab_size", "max_length", "model_max_length", "epochs", "budget_min", "batch_size", "lr", "warmup",
            "threads", "seed"]
    return {k: getattr(args, k) for k in keys}


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "loadavg_at_end": [round(x, 2) for x in load] if load else None,
            "python": platform.python_version()}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with progress.stage("read SST-2", f"{args.train}, {args.dev}"):
        train_data, dev_data = read_tsv(args.train), read_tsv(args.dev)
    results = [run_family(f, args, train_data, dev_data) for f in args.family]
    for m in results:
        print(f"{m['family']}: dev accuracy {m['dev_accuracy']:.4f} after {m['steps']} steps "
              f"({m['epochs_done']} epochs, {m['train_seconds']:.0f} s, load {m['machine']['loadavg_at_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
