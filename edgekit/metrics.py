"""The gate's metrics in numpy and pure Python: accuracy, and entity-level F1 in the seqeval convention.

Entity extraction follows seqeval's default (non-strict) mode for IOB1/IOB2
tags, so its figures match ``seqeval.metrics.f1_score`` on the same tags: a
chunk starts at ``B-X``, at ``I-X`` after ``O`` or after a chunk of another
type, and ends before ``O``, ``B-*`` or a tag of another type. Scores are
micro-averaged over all entities of all sentences.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100


def classification_scores(logits: np.ndarray, targets: np.ndarray, id2label: dict | None = None) -> dict:
    """``accuracy``: share of examples whose argmax is the target class."""
    targets = np.asarray(targets)
    return {"accuracy": float((logits.argmax(-1) == targets).mean()) if len(targets) else 0.0}


def _split(tag: str) -> tuple[str, str]:
    """``'B-PER'`` -> ``('B', 'PER')``; ``'O'`` -> ``('O', '_')``; a bare type ``'PER'`` -> ``('PER'[0], '_')``."""
    if tag in ("O", ""):
        return "O", "_"
    prefix, _, kind = tag.partition("-")
    return (prefix, kind or "_") if kind else (tag[0], tag[1:] or "_")


def _ends(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev != "O" and prev_type != kind


def _starts(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != kind


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """Chunks of one tag sequence as ``(type, first, last)`` word indices (inclusive), seqeval-style."""
    chunks, prev, prev_type, begin = [], "O", "_", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = _split(tag)
        if _ends(prev, prefix, prev_type, kind):
            chunks.append((prev_type, begin, i - 1))
        if _starts(prev, prefix, prev_type, kind):
            begin = i
        prev, prev_type = prefix, kind
    return chunks


def entity_scores(true: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro precision, recall and F1 of the predicted entities against the true ones (per-sentence tag lists)."""
    want = {(s, *e) for s, tags in enumerate(true) for e in entities(tags)}
    got = {(s, *e) for s, tags in enumerate(pred) for e in entities(tags)}
    hit = len(want & got)
    precision = hit / len(got) if got else 0.0
    recall = hit / len(want) if want else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1,
            "entities_true": len(want), "entities_predicted": len(got)}


def word_tags(ids: np.ndarray, targets: np.ndarray, id2label: dict) -> list[list[str]]:
    """Per example, the tag names of the scored positions (``targets != IGNORE``), in order."""
    return [[id2label[int(i)] for i in row[t != IGNORE]] for row, t in zip(ids, np.asarray(targets))]


def fit_tokens(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-token outputs cut or zero-padded to the targets' sequence length (an engine may pad further)."""
    width = np.shape(targets)[1]
    if logits.shape[1] >= width:
        return logits[:, :width]
    return np.pad(logits, ((0, 0), (0, width - logits.shape[1]), (0, 0)))


def token_scores(logits: np.ndarray, targets: np.ndarray, id2label: dict) -> dict:
    """Entity-level F1 (the gate's metric), precision and recall, plus accuracy over scored tokens (words)."""
    targets = np.asarray(targets)
    pred = fit_tokens(logits, targets).argmax(-1)
    scored = targets != IGNORE
    out = entity_scores(word_tags(targets, targets, id2label), word_tags(pred, targets, id2label))
    out["token_accuracy"] = float((pred[scored] == targets[scored]).mean()) if scored.any() else 0.0
    return out
