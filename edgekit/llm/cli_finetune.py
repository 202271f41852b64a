"""``edgekit finetune-lm``: the Click command over :func:`edgekit.llm.finetune.finetune_lm`.

The main CLI registers it: ``main.add_command(finetune_lm_cmd)``. (``edgekit
finetune --task text-generation`` could route here instead: same options,
BASE_MODEL and --data/--eval-data/--out as for the classifier.) Errors are
EdgekitErrors, printed as one line by the main group's boundary.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli_options import path_arg



def _label_words(ctx, param, value):
    """``0=negative,1=positive`` -> {"0": "negative", "1": "positive"}."""
    if value is None:
        return None
    pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise click.BadParameter(f"expected LABEL=WORD pairs separated by commas, got {value!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def _names(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


@click.command("finetune-lm")
@click.argument("base_model")
@click.option("--data", required=True, help="jsonl (prompt/response or messages) or a labeled tsv/csv.")
@click.option("--eval-data", default=None, help="Held-out rows scored by generated answers (same formats).")
@click.option("--out", required=True, type=path_arg, help="Output HF folder (safetensors + tokenizer + config).")
@click.option("--lora/--full", default=True, show_default=True, help="LoRA adapters merged at the end, or full FT.")
@click.option("--rank", default=8, show_default=True, type=int, help="LoRA rank.")
@click.option("--alpha", default=16.0, show_default=True, type=float, help="LoRA alpha.")
@click.option("--dropout", default=0.05, show_default=True, type=float, help="LoRA dropout.")
@click.option("--target-modules", default=None, callback=_names,
              help="Comma-separated Linear names, e.g. q_proj,v_proj (default: all but the LM head).")
@click.option("--epochs", default=1.0, show_default=True, type=float)
@click.option("--max-steps", default=None, type=int, help="Stop after this many steps.")
@click.option("--lr", default=2e-4, show_default=True, type=float, help="Peak AdamW learning rate.")
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--max-length", default=256, show_default=True, type=int, help="Tokens per row.")
@click.option("--max-samples", default=None, type=int, help="Train on a seeded random subset of this many rows.")
@click.option("--eval-samples", default=None, type=int, help="Score a seeded subset of this many held-out rows.")
@click.option("--eval-base", is_flag=True, help="Also score the base model before training.")
@click.option("--max-new-tokens", default=4, show_default=True, type=int, help="Greedy tokens per held-out row.")
@click.option("--prompt-template", default=None, help="Instruction for tsv/csv rows, with {text}.")
@click.option("--label-words", default=None, callback=_label_words,
              help="LABEL=WORD pairs for tsv/csv responses (default: 0=negative,1=positive).")
@click.option("--text-column", default=None, help="tsv/csv text column (default: auto-detected).")
@click.option("--label-column", default=None, help="tsv/csv label column (default: auto-detected).")
@click.option("--save-steps", default=50, show_default=True, type=int, help="Checkpoint interval (for --resume).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in .<OUT>.work.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="CPU threads for torch (default: all cores).")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that edgekit did not write.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def finetune_lm_cmd(base_model, data, eval_data, out, lora, rank, alpha, dropout, target_modules, epochs, max_steps,
                    lr, batch_size, max_length, max_samples, eval_samples, eval_base, max_new_tokens, prompt_template,
                    label_words, text_column, label_column, save_steps, resume, seed, threads, force, as_json):
    """Fine-tune the causal LM BASE_MODEL (HF folder or pkg:NAME) on prompt/response rows into OUT."""
    from ..cli_options import refuse_given
    from .finetune import LMFinetuneOptions, finetune_lm

    ignored = {}  # each was accepted and ignored
    if not lora:
        ignored.update(dict.fromkeys(("rank", "alpha", "dropout", "target_modules"),
                                     "it shapes the LoRA adapters, and --full trains every weight"))
    if eval_data is None:
        ignored.update(dict.fromkeys(("eval_base", "eval_samples", "max_new_tokens"),
                                     "it applies to scoring --eval-data, and none was given"))
    if not any(Path(f).suffix.lower() in (".tsv", ".csv") for f in (data, eval_data) if f is not None):
        ignored.update(dict.fromkeys(("prompt_template", "label_words", "text_column", "label_column"),
                                     "it turns labeled tsv/csv rows into prompts, and the data is jsonl"))
    refuse_given(ignored)
    options = LMFinetuneOptions(
        lora=lora, rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules, epochs=epochs,
        max_steps=max_steps, lr=lr, batch_size=batch_size, max_length=max_length, max_samples=max_samples,
        eval_samples=eval_samples, eval_base=eval_base, max_new_tokens=max_new_tokens, text_column=text_column,
        label_column=label_column, save_steps=save_steps, resume=resume, seed=seed, threads=threads)
    if prompt_template is not None:
        options.prompt_template = prompt_template.replace("\\n", "\n")
    if label_words is not None:
        options.label_words = label_words
    m = finetune_lm(base_model, data, out, options, eval_data=eval_data, force=force)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    acc = (f"accuracy {m['accuracy']:.4f} on {m['eval_samples']} rows" if m.get("accuracy") is not None
           else "no --eval-data, accuracy not measured")
    base_acc = f" (base {m['accuracy_base']:.4f})" if m.get("accuracy_base") is not None else ""
    click.echo(f"Fine-tuned {base_model} ({'LoRA merged' if m['lora'] else 'full'}) on {m['train_samples']} rows "
               f"({m['steps']} steps, loss {m['first_loss']} -> {m['last_loss']}): {acc}{base_acc}. Saved to {out}.")
