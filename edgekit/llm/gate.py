"""The causal-LM gate: an optimized artifact against the original on three measures, each with its budget.

(a) **Task accuracy from generated answers.** Each labeled row becomes a chat message through a
    :class:`~edgekit.llm.prompts.PromptTemplate` (SST-2 default, ``prompts.DEFAULT_TEMPLATE`` "oneword": "Is the
    sentiment of this movie review positive or negative? Answer with one word.\n\nReview: ..."); the model answers greedily (``answer_tokens`` new tokens) and the first label word
    in the answer is its prediction (no label word = wrong). Budget: accuracy drop <= ``max_accuracy_drop`` points.
(b) **Greedy-token agreement.** The original generates ``agreement_tokens`` greedy tokens after each of
    ``agreement_prompts`` prompts; the artifact, fed the same tokens (teacher forcing), must pick the same top-1
    token at each position: budget ``min_agreement``. Also reported: the share of prompts whose free-running
    greedy continuation is identical over all N tokens, and the mean length of the identical prefix.
(c) **Perplexity** on held-out text (SST-2 *train* sentences joined with spaces, the first ``ppl_tokens`` tokens,
    in windows of ``ppl_window``). Budget: artifact perplexity <= original * (1 + ``max_ppl_increase``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import progress
from ..data import FORMATS, load_dataset
from ..errors import DataError
from .prompts import DEFAULT_TEMPLATE, PromptTemplate, template


@dataclass
class LMGateOptions:
    """Budgets and sizes of the causal-LM gate; the CLI flags share these names."""

    rows: int | None = field(default=200, metadata={"help": "labeled rows scored (None = all)"})
    template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": "prompt template name or text with {text}"})
    answer_tokens: int = field(default=16, metadata={"help": "new tokens generated per answer (EOS ends it sooner)"})
    max_accuracy_drop: float = field(default=1.0, metadata={"help": "allowed accuracy drop, points"})
    agreement_prompts: int = field(default=16, metadata={"help": "prompts for greedy-token agreement"})
    agreement_tokens: int = field(default=16, metadata={"help": "greedy tokens compared per prompt"})
    min_agreement: float = field(default=0.90, metadata={"help": "min teacher-forced top-1 agreement"})
    ppl_text: str | None = field(default=None, metadata={"help": "held-out text file (default: SST-2 train)"})
    ppl_tokens: int = field(default=2048, metadata={"help": "held-out tokens scored"})
    ppl_window: int = field(default=256, metadata={"help": "tokens per perplexity window"})
    max_ppl_increase: float = field(default=0.10, metadata={"help": "allowed relative perplexity increase"})


def task_accuracy(sides: list, prompt: PromptTemplate, texts: list[str], labels: list[int],
                  answer_tokens: int) -> dict:
    """Accuracy from each side's greedy answers, keyed by side name; all sides get the same token ids
    (tokenized by the first side that has a runtime tokenizer: an ArtifactLM), answers decoded the same way."""
    reader = next(s for s in sides if hasattr(s, "encode"))
    ids = [reader.encode(prompt.messages(t)) for t in texts]
    out = {}
    for side in sides:
        preds, answers = [], []
        for x in progress.bar(ids, total=len(ids), desc=f"answers ({side.name})"):
            answer = reader.decode(side.greedy(x, answer_tokens))
            answers.append(answer)
            preds.append(prompt.parse(answer))
        correct = sum(p == y for p, y in zip(preds, labels, strict=True))
        out[side.name] = {"accuracy": correct / len(labels), "n": len(labels),
                          "unparsed": sum(p is None for p in preds), "answers": answers[:8]}
    return out


def greedy_agreement(original, artifact, prompts: list[list[int]], n_tokens: int) -> dict:
    """Teacher-forced top-1 agreement over the original's first ``n_tokens`` greedy tokens, plus free-running matches."""
    agree = total = identical = prefix_sum = 0
    for ids in progress.bar(prompts, total=len(prompts), desc="greedy agreement"):
        ref = original.greedy(ids, n_tokens)
        if not ref:
            continue
        logits = artifact.logits(ids + ref)
        picks = logits[len(ids) - 1: len(ids) - 1 + len(ref)].argmax(-1)
        agree += int((picks == np.asarray(ref)).sum())
        total += len(ref)
        free = artifact.greedy(ids, n_tokens)
        prefix = next((i for i, (a, b) in enumerate(zip(ref, free)) if a != b), min(len(ref), len(free)))
        prefix_sum += prefix
        identical += int(free == ref)
    n = max(len(prompts), 1)
    return {"teacher_forced": agree / max(total, 1), "tokens": total, "identical_sequences": identical / n,
            "mean_identical_prefix": prefix_sum / n, "prompts": len(prompts), "n_tokens": n_tokens}


def perplexity(lm, ids: list[int], window: int) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``ids`` (each window from an empty cache)."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start: start + window]
        if len(chunk) < 2:
            break
        logits = lm.logits(chunk).astype(np.float64)[:-1]
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll += float((logz - logits[np.arange(len(chunk) - 1), chunk[1:]]).sum())
        count += len(chunk) - 1
    return float(np.exp(nll / max(count, 1)))


DATA_SUFFIXES = tuple(k for k, v in FORMATS.items() if v in ("tsv", "csv", "jsonl"))  # what --data reads


def held_out_texts(path: str | Path) -> list[str]:
    """The texts of a held-out file: a data file's text column (found by its header, as for --data), else the lines
    of plain text. The text was taken as whatever followed a line's first tab: a ``sentence<TAB>label`` file scored
    its labels, a .csv its header and label column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Held-out text '{path}' not found", None, "Pass an existing file as ppl_text")
    if path.suffix.lower() in DATA_SUFFIXES:
        return load_dataset(path, require_labels=False).texts
    return path.read_text(errors="replace").splitlines()


def held_out_ids(tokenizer, path: str | Path, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` tokens of ``path``'s texts (``held_out_texts``) joined with spaces."""
    ids: list[int] = []
    for line in held_out_texts(path):
        ids += tokenizer.encode(" " + line.strip(), add_special_tokens=False).ids
        if len(ids) >= n_tokens:
            break
    if len(ids) < 32:
        raise DataError(f"Held-out text '{path}' is too short", f"{len(ids)} tokens", "Pass a longer text")
    return ids[:n_tokens]


def run_gate(original, artifact, texts: list[str], labels: list[int], options: LMGateOptions,
             ppl_path: str | Path) -> dict:
    """All three measures and their checks; ``passed`` is True only when every budget holds."""
    prompt = template(options.template)
    n = len(texts) if options.rows is None else min(options.rows, len(texts))
    with progress.stage("gate: task accuracy", f"{n} rows, generated answers"):
        acc = task_accuracy([original, artifact], prompt, texts[:n], labels[:n], options.answer_tokens)
    k = min(options.agreement_prompts, len(texts))
    prompts = [artifact.encode(prompt.messages(t)) for t in texts[-k:]]
    with progress.stage("gate: greedy agreement", f"{k} prompts x {options.agreement_tokens} tokens"):
        agreement = greedy_agreement(original, artifact, prompts, options.agreement_tokens)
    ids = held_out_ids(artifact.generator.tokenizer, ppl_path, options.ppl_tokens)
    with progress.stage("gate: perplexity", f"{len(ids)} held-out tokens"):
        ppl = {side.name: perplexity(side, ids, options.ppl_window) for side in (original, artifact)}
    drop = 100 * (acc["original"]["accuracy"] - acc["artifact"]["accuracy"])
    checks = [
        _check("accuracy_drop_points", drop, options.max_accuracy_drop, drop <= options.max_accuracy_drop),
        _check("greedy_agreement", agreement["teacher_forced"], options.min_agreement,
               agreement["teacher_forced"] >= options.min_agreement),
        _check("perplexity_ratio", ppl["artifact"] / ppl["original"], 1 + options.max_ppl_increase,
               ppl["artifact"] <= ppl["original"] * (1 + options.max_ppl_increase)),
    ]
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "accuracy": acc,
            "agreement": agreement, "perplexity": {**ppl, "tokens": len(ids), "text": str(ppl_path)},
            "prompt_template": prompt.text, "rows": n}


def _check(name: str, value: float, budget: float, passed: bool) -> dict:
    return {"name": name, "value": round(float(value), 4), "budget": budget, "passed": bool(passed)}
