"""Model knowledge as data: one entry per task, asked by the generic steps instead of isinstance chains.

An entry says what the model takes (inputs from its config), what it returns
(outputs and their dynamic axes), how a labeled dataset is read and turned
into targets, how the gate scores outputs against the targets (what
"accuracy" and its "drop" mean for the task) and which runtime predictor
serves it. Task names are optimum's (``TasksManager``); the model class for a
task comes from ``TasksManager.get_model_class_for_task``.

Pure Python + numpy: the runtime reads this table too. Adding a task
(text-generation, image-classification) is adding an entry; a step that meets
a task without a reader or scorer raises a one-line error naming the tasks
that have one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import metrics
from .errors import InputError, ModelError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IGNORE = -100  # target of a position the gate does not score (special tokens, later sub-tokens, padding)


def text_inputs(config: dict, accepted=None) -> list[str]:
    """Inputs of a text model: ids and mask, plus ``token_type_ids`` only where the model has a segment table.

    ``config``: config.json as a dict. ``accepted``: the forward's parameter names (None = not known).
    GPT-2 (no type table), DistilBERT (no parameter), RoBERTa (one type) and DeBERTa-v2 (type_vocab_size 0)
    take ids and mask only; BERT and ELECTRA (two types) take all three.
    """
    names = [n for n in TEXT_INPUTS if accepted is None or n in accepted]
    if "token_type_ids" in names and int(config.get("type_vocab_size") or 0) < 2:
        names.remove("token_type_ids")
    return names


@dataclass(frozen=True)
class Task:
    """What the generic steps need to know about one task."""

    name: str
    outputs: tuple[str, ...]                 # attributes of the model's output object, in ONNX output order
    output_axes: tuple[dict, ...]            # per output: axis index -> "batch" | "sequence"
    inputs: Callable[..., list[str]] = text_inputs     # (config dict, forward params) -> input names
    metric: str | None = None                # the gate's metric: "accuracy" and "drop" are this one
    score: Callable | None = None            # (logits, targets, id2label) -> {metric: value, ...}
    predict: Callable | None = None          # (logits, targets) -> predicted label ids per scored position
    reader: str | None = None                # edgekit.data function that reads a labeled dataset for it
    predictor: str | None = None             # edgekit.runtime class that serves it
    per_token: bool = False                  # targets are per token: [batch, sequence], IGNORE where unscored

    @property
    def classifies(self) -> bool:
        """Argmax of the first output is a label per example (kept for older call sites)."""
        return self.metric is not None and not self.per_token


def _argmax(logits: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
    return logits.argmax(-1)


def _scored_argmax(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Argmax at the scored positions only (first sub-token of each word), flattened in reading order."""
    return metrics.fit_tokens(logits, targets).argmax(-1)[np.asarray(targets) != IGNORE]


_SEQ = ({0: "batch"},)
_TOK = ({0: "batch", 1: "sequence"},)

TASKS: dict[str, Task] = {
    "text-classification": Task(
        "text-classification", ("logits",), _SEQ, metric="accuracy", score=metrics.classification_scores,
        predict=_argmax, reader="load_dataset", predictor="TextClassifier"),
    "token-classification": Task(
        "token-classification", ("logits",), _TOK, metric="entity_f1", score=metrics.token_scores,
        predict=_scored_argmax, reader="load_token_dataset", predictor="TokenClassifier", per_token=True),
    "feature-extraction": Task("feature-extraction", ("last_hidden_state",), _TOK),
    "fill-mask": Task("fill-mask", ("logits",), _TOK),
    "question-answering": Task("question-answering", ("start_logits", "end_logits"), _TOK * 2),
}

#: architecture name suffixes of causal language models (served by edgekit.llm, not a TASKS entry)
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def causal_lm_architectures(folder: str | Path) -> list[str]:
    """The causal-LM architectures config.json names (``*ForCausalLM``, ``*LMHeadModel``); [] for anything else,
    an unreadable config included."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    archs = config.get("architectures") if isinstance(config, dict) else None
    return [str(a) for a in archs if str(a).endswith(CAUSAL_LM_SUFFIXES)] if isinstance(archs, list) else []


#: architecture name suffix -> task, for folders without a manifest (no transformers import needed)
ARCHITECTURE_SUFFIXES = {"ForSequenceClassification": "text-classification",
                         "ForTokenClassification": "token-classification",
                         "ForQuestionAnswering": "question-answering", "ForMaskedLM": "fill-mask"}


def task_spec(name: str) -> Task:
    if name not in TASKS:
        raise InputError(f"Unsupported task '{name}'", None, f"Choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def gated(name: str) -> Task:
    """The entry for a task the accuracy gate can score, or a one-line error naming those it can."""
    spec = task_spec(name)
    if spec.score is None:
        scored = [t for t, s in TASKS.items() if s.score is not None]
        raise ModelError(f"Task '{name}' has no accuracy gate", f"labeled checks exist for {', '.join(scored)}",
                         "Pass a model of one of those tasks")
    return spec


def task_of(folder: str | Path) -> str:
    """The task of an artifact folder: its manifest's ``task``, else from config.json's architecture name.

    Defaults to text-classification (every artifact edgekit made before tasks were recorded was one).
    """
    folder = Path(folder)
    folder = folder if folder.is_dir() else folder.parent
    for name in ("manifest.json", "config.json"):
        try:
            record = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("task"), str) and record["task"] in TASKS:
            return record["task"]
        archs = record.get("architectures") or []
        for arch in [archs] if isinstance(archs, str) else archs if isinstance(archs, list) else []:
            for suffix, task in ARCHITECTURE_SUFFIXES.items():
                if str(arch).endswith(suffix):
                    return task
    return "text-classification"
