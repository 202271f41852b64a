"""Accuracy and fidelity of a candidate artifact against the original, on labeled data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import progress
from .artifact import Artifact, resolve
from . import data as data_readers
from .data import TextDataset, encode_labels, encode_tags
from .errors import DataError, InputError, ModelError
from .memory import check_rows_fit, on_host
from .metrics import IGNORE, entities, fit_tokens, word_tags
from .runtime.session import Session, check_threads
from .runtime.tokenizer import TextEncoder, read_config
from .sessions import check_same_tokenizer, encoder_for, session_for
from .tasks import Task, gated, task_of


class Targets(np.ndarray):
    """Integer targets that also carry the model's ``id2label`` and task (per-token scorers need the tag names).

    An ndarray, so ``len``, ``==`` and ``mean`` work as on the plain class-id arrays callers already use.
    """

    id2label: dict[int, str]
    task: str

    def __new__(cls, values, id2label: dict[int, str], task: str):
        out = np.asarray(values, dtype=np.int64).view(cls)
        out.id2label, out.task = id2label, task
        return out

    def __array_finalize__(self, obj) -> None:
        self.id2label = getattr(obj, "id2label", {})
        self.task = getattr(obj, "task", "text-classification")


def evaluate(session: Session, encoder: TextEncoder, texts: list[str], batch_size: int = 32,
             pairs: list[str] | None = None) -> np.ndarray:
    """First output for every text, batched by length to keep padding small; input order kept.

    Per-example outputs give ``[n, labels]``; per-token outputs give ``[n, longest, labels]`` with every
    row's positions where its own batch put them (right padding) and zeros past them.
    """
    if on_host(session) and texts:
        check_rows_fit(encoder, texts, min(batch_size, len(texts)))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks: dict[int, np.ndarray] = {}
    with session:
        for start in progress.bar(range(0, len(order), batch_size), desc="evaluate", unit="batch"):
            idx = order[start:start + batch_size]
            feeds = session.feeds(encoder([texts[i] for i in idx], None if pairs is None else [pairs[i] for i in idx]))
            logits = next(iter(session.run(feeds).values()))
            for row, i in enumerate(idx):
                chunks[i] = logits[row]
    rows = [chunks[i] for i in range(len(texts))]
    if rows and rows[0].ndim == 2:  # per token: pad to the longest batch
        longest = max(r.shape[0] for r in rows)
        rows = [np.pad(r, ((0, longest - r.shape[0]), (0, 0))) for r in rows]
    return np.stack(rows).astype(np.float32)


def _check_pairs(model: Artifact, ds: TextDataset) -> None:
    """Data read as pairs for a model fine-tuned on single sentences, or the other way round, is refused (a pair
    model scored on single sentences read 0.90 without a word). Known for models edgekit fine-tuned (their
    manifest's ``pairs``); others are taken as they come."""
    trained = (model.manifest or {}).get("pairs")
    if trained is None or trained == (ds.pairs is not None):
        return
    if trained:
        raise DataError(f"Dataset '{ds.source}' has single sentences, and '{model.path}' was fine-tuned on pairs",
                        "it would be scored on inputs it never saw", "Pass data with both sentences of each pair "
                        "(e.g. sentence1 and sentence2 columns)")
    raise DataError(f"Dataset '{ds.source}' is read as pairs ({ds.text_column} + its second column), and "
                    f"'{model.path}' was fine-tuned on single sentences", "it would be scored on inputs it never saw",
                    "Pass data with the one text column it was trained on")


def gate_reader(model: Artifact):
    """The ``edgekit.data`` function that reads labeled rows for the model's task (its entry's ``reader``)."""
    return getattr(data_readers, gated(task_of(model.folder)).reader)


def labeled_data(model: Artifact, data: str | Path | TextDataset, text_column: str | None = None,
                 label_column: str | None = None, max_samples: int | None = None,
                 seed: int = 0) -> tuple[TextDataset, np.ndarray]:
    """The dataset (``max_samples`` rows drawn with ``seed``) and its targets in the model's label ids.

    The model's task (manifest, else config.json's architecture) decides how: one class id per example
    for text classification; for token classification ``[n, tokens]`` tag ids on the first sub-token of
    each word and ``IGNORE`` (-100) on the rest, tokens as ``encoder_for(model)`` makes them.
    """
    spec = gated(task_of(model.folder))
    whole = data if isinstance(data, TextDataset) else gate_reader(model)(data, text_column, label_column)
    ds = whole.subset(max_samples, seed)
    label2id = _label2id(model)
    if spec.per_token:
        if ds.tags is None:
            raise DataError(f"Dataset '{ds.source}' has no tags", "a token classifier is checked on words and "
                            "one tag per word", "Pass jsonl rows with tokens and ner_tags, or a CoNLL file")
        tags = encode_tags(ds.tags, label2id, ds.source)
        encoder, id2label = encoder_for(model), _id2label(label2id)
        encs = encoder.encodings(ds.texts)  # once, for the targets and for what the maximum length cut
        targets = Targets(align_tags(encoder, ds, tags, encs), id2label, spec.name)
        targets.past_max_length = _entities_past_max_length(encoder.max_length, encs, ds, tags, id2label)
        return ds, targets
    if ds.labels is None:
        raise DataError(f"Dataset '{ds.source}' has no labels", None, "Pass --label-column")
    _check_pairs(model, ds)
    # names or ids is read off the whole file, not the sample (a sample without "0" read star ids as names)
    return ds, Targets(encode_labels(ds.labels, label2id, ds.source, reading_of=whole.labels), _id2label(label2id),
                       spec.name)


def align_tags(encoder: TextEncoder, ds: TextDataset, tags: list[list[int]], encs: list | None = None) -> np.ndarray:
    """``[n, longest]`` targets: each word's tag on its first sub-token, IGNORE elsewhere (and on cut words).
    ``encs``: ``encoder.encodings(ds.texts)`` when the caller has them."""
    encs = encoder.encodings(ds.texts) if encs is None else encs
    out = np.full((len(encs), max((len(e.ids) for e in encs), default=0)), IGNORE, dtype=np.int64)
    for row, enc in enumerate(encs):
        spans = ds.word_spans(row)
        seen = set()
        for pos, ((start, end), special) in enumerate(zip(enc.offsets, enc.special_tokens_mask)):
            word = _word_at(spans, start, end)
            if special or word is None or word in seen:
                continue
            seen.add(word)
            out[row, pos] = tags[row][word]
    return out


def _entities_past_max_length(max_length: int, encs: list, ds: TextDataset, tags: list[list[int]],
                              id2label: dict[int, str]) -> int:
    """The gold entities that reach into words cut off by the model's maximum length: no model can tag them, and
    leaving them out made entities_true and the recall overstate what was scored (22 entities counted as 17)."""
    count = 0
    for row, enc in enumerate(encs):
        if len(enc.ids) < max_length:
            continue
        spans = ds.word_spans(row)
        seen = [_word_at(spans, s, e) for (s, e), special in zip(enc.offsets, enc.special_tokens_mask) if not special]
        first_cut = max((w for w in seen if w is not None), default=-1) + 1
        count += sum(last >= first_cut for _, _, last in entities([id2label[t] for t in tags[row]]))
    return count


def _word_at(spans: list[tuple[int, int]], start: int, end: int) -> int | None:
    """The word whose characters the token [start, end) covers (byte-level tokens may start at the space)."""
    for i, (ws, we) in enumerate(spans):
        if end > ws and start < we:
            return i
    return None


def _label2id(model: Artifact) -> dict[str, int]:
    """Label name -> id as the runtime serves them: from config.json's id2label (what ``load`` answers with), its
    label2id only where id2label is missing (a stale label2id scored 0.10 a model the runtime runs at 0.90)."""
    label2id = {name: i for i, name in _served_labels(model).items()}
    if not label2id:
        label2id = {str(k): int(v) for k, v in (read_config(model.folder).get("label2id") or {}).items()}
    if not label2id:
        raise ModelError(f"Model '{model.path}' has no labels", "config.json has neither label2id nor id2label",
                         "Save the model with its label mapping (config.id2label)")
    return label2id


def _id2label(label2id: dict[str, int]) -> dict[int, str]:
    return {v: k for k, v in label2id.items()}


def _spec_of(labels: np.ndarray, task: str | None) -> Task:
    if task is None:
        task = getattr(labels, "task", None) or ("token-classification" if np.ndim(labels) == 2
                                                 else "text-classification")
    return gated(task)


def score(logits: np.ndarray, labels: np.ndarray, task: str | None = None) -> dict:
    """The task's metrics of ``logits`` against ``labels`` (from :func:`labeled_data`); its gate metric first."""
    spec = _spec_of(labels, task)
    scores = spec.score(logits, labels, getattr(labels, "id2label", None))
    missed = getattr(labels, "past_max_length", 0)
    if missed and "entities_true" in scores:  # gold entities no model could tag count as missed, for both models
        hit = round(scores["entity_recall"] * scores["entities_true"])
        want = scores["entities_true"] + missed
        recall, precision = hit / want, scores["entity_precision"]
        scores.update(entities_true=want, entity_recall=recall, entities_past_max_length=missed,
                      entity_f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return scores


def gate_metric(logits: np.ndarray, labels: np.ndarray, task: str | None = None) -> float:
    """The one number the gate compares for the task (accuracy, entity F1...): use it where code computed
    ``(logits.argmax(-1) == labels).mean()``, which is only right for text classification."""
    spec = _spec_of(labels, task)
    return float(score(logits, labels, spec.name)[spec.metric])


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, task: str | None = None) -> dict:
    """Both scored by the task's metric, the drop, label agreement and output differences.

    ``original_accuracy`` / ``candidate_accuracy`` / ``accuracy_drop`` are the task's gate metric
    (``metric``: accuracy for text classification, entity-level F1 for token classification); every
    metric of both is under ``original_metrics`` / ``candidate_metrics``. Per-token outputs are compared
    at the scored positions only.
    """
    spec = _spec_of(labels, task)
    ref_scores, cand_scores = score(reference, labels, spec.name), score(candidate, labels, spec.name)
    ref_pred, cand_pred = spec.predict(reference, labels), spec.predict(candidate, labels)
    if spec.per_token:
        reference, candidate = fit_tokens(reference, labels), fit_tokens(candidate, labels)
    keep = np.asarray(labels) != IGNORE if spec.per_token else slice(None)
    diff = np.abs(reference[keep].astype(np.float64) - candidate[keep].astype(np.float64))
    ref_acc, cand_acc = ref_scores[spec.metric], cand_scores[spec.metric]
    return {
        "samples": int(len(labels)),
        "metric": spec.metric,
        "original_accuracy": ref_acc,
        "candidate_accuracy": cand_acc,
        "accuracy_drop": ref_acc - cand_acc,
        "label_agreement": float((ref_pred == cand_pred).mean()) if ref_pred.size else 1.0,
        "logit_max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "logit_mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "original_metrics": ref_scores,
        "candidate_metrics": cand_scores,
    }


def predictions(logits: np.ndarray, labels: np.ndarray) -> list:
    """What the candidate predicts, as runtime users see it: a class id per example (text classification),
    the tag name of each word per example (token classification)."""
    spec = _spec_of(labels, None)
    if spec.per_token:
        return word_tags(fit_tokens(logits, labels).argmax(-1), labels, labels.id2label)
    return logits.argmax(-1).tolist()


def check(original: str | Path, candidate: str | Path, data: str | Path, text_column: str | None = None,
          label_column: str | None = None, batch_size: int = 1, threads: int | None = None,
          max_samples: int | None = None) -> dict:
    """Run both artifacts on the same tokenized inputs from labeled ``data`` and compare them."""
    for flag, value in (("--batch-size", batch_size), ("--threads", threads), ("--max-samples", max_samples)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}", None,
                             "Omit it for the default" if flag != "--batch-size" else "Use your serving batch size")
    check_threads(threads, "--threads")
    orig, cand = resolve(original), resolve(candidate)
    same_labels(orig, cand)
    encoder = encoder_for(orig)
    check_same_tokenizer(encoder, {"candidate": cand})
    ds, labels = labeled_data(orig, data, text_column, label_column, max_samples)
    # the candidate first: an artifact that cannot run here (an engine without a GPU) fails before any work
    got = evaluate(session_for(cand, threads), encoder, ds.texts, batch_size, ds.pairs)
    ref = evaluate(session_for(orig, threads), encoder, ds.texts, batch_size, ds.pairs)
    if ref.shape[-1] != got.shape[-1] or ref.ndim != got.ndim:
        raise ModelError("The candidate's outputs do not match the original's shape",
                         f"original {ref.shape[1:]}, candidate {got.shape[1:]}",
                         "Compare artifacts of the same model and task")
    result = compare(ref, got, labels)
    result.update({"original": str(orig.path), "candidate": str(cand.path), "data": str(data),
                   "task": labels.task, "original_backend": _backend(orig), "candidate_backend": _backend(cand),
                   "candidate_predictions": predictions(got, labels)})
    return result


def same_labels(original: Artifact, candidate: Artifact) -> None:
    """A ModelError when the two artifacts name their classes differently: the candidate is scored on the
    original's labels, so one serving them swapped (0 = positive) would pass with no accuracy drop."""
    ours, theirs = (_served_labels(a) for a in (original, candidate))
    if ours and theirs and ours != theirs:
        diff = next(i for i in sorted(set(ours) | set(theirs)) if ours.get(i) != theirs.get(i))
        raise ModelError("The candidate's labels are not the original's",
                         f"class {diff} is {ours.get(diff)!r} in the original and {theirs.get(diff)!r} in the "
                         "candidate (config.json id2label)",
                         "Compare artifacts of the same model; copy config.json from the model the candidate "
                         "was made from")


def _served_labels(art: Artifact) -> dict[int, str]:
    raw = read_config(art.folder).get("id2label") or {}
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        return {}


def _backend(art: Artifact) -> str:
    return {"hf": "pytorch", "onnx": "onnxruntime"}.get(art.kind, art.manifest.get("backend", "tensorrt"))
