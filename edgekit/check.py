"""Accuracy and fidelity of a candidate artifact against the original, on labeled data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import Artifact, resolve
from .data import TextDataset, encode_labels, load_dataset
from .errors import DataError, ModelError
from .runtime.session import Session
from .runtime.tokenizer import TextEncoder, read_config
from .sessions import encoder_for, session_for


def evaluate(session: Session, encoder: TextEncoder, texts: list[str], batch_size: int = 32,
             pairs: list[str] | None = None) -> np.ndarray:
    """First output (logits) for every text, batched by length to keep padding small; input order kept."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks: dict[int, np.ndarray] = {}
    with session:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            feeds = session.feeds(encoder([texts[i] for i in idx], None if pairs is None else [pairs[i] for i in idx]))
            logits = next(iter(session.run(feeds).values()))
            for row, i in enumerate(idx):
                chunks[i] = logits[row]
    return np.stack([chunks[i] for i in range(len(texts))]).astype(np.float32)


def labeled_data(model: Artifact, data: str | Path | TextDataset, text_column: str | None = None,
                 label_column: str | None = None, max_samples: int | None = None,
                 seed: int = 0) -> tuple[TextDataset, np.ndarray]:
    """The dataset (``max_samples`` rows drawn with ``seed``) and its labels as the model's class ids."""
    ds = data if isinstance(data, TextDataset) else load_dataset(data, text_column, label_column)
    ds = ds.subset(max_samples, seed)
    config = read_config(model.folder)
    label2id = {str(k): int(v) for k, v in (config.get("label2id") or {}).items()}
    if not label2id and config.get("id2label"):
        label2id = {str(v): int(k) for k, v in config["id2label"].items()}
    if not label2id:
        raise ModelError(f"Model '{model.path}' has no labels", "config.json has neither label2id nor id2label",
                         "Save the model with its label mapping (config.id2label)")
    if ds.labels is None:
        raise DataError(f"Dataset '{ds.source}' has no labels", None, "Pass --label-column")
    return ds, np.asarray(encode_labels(ds.labels, label2id, ds.source), dtype=np.int64)


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy of both, drop, label agreement and logit differences."""
    ref_pred, cand_pred = reference.argmax(-1), candidate.argmax(-1)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    ref_acc, cand_acc = float((ref_pred == labels).mean()), float((cand_pred == labels).mean())
    return {
        "samples": int(len(labels)),
        "original_accuracy": ref_acc,
        "candidate_accuracy": cand_acc,
        "accuracy_drop": ref_acc - cand_acc,
        "label_agreement": float((ref_pred == cand_pred).mean()),
        "logit_max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "logit_mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
    }


def check(original: str | Path, candidate: str | Path, data: str | Path, text_column: str | None = None,
          label_column: str | None = None, batch_size: int = 1, threads: int | None = None,
          max_samples: int | None = None) -> dict:
    """Run both artifacts on the same tokenized inputs from labeled ``data`` and compare them."""
    orig, cand = resolve(original), resolve(candidate)
    ds, labels = labeled_data(orig, data, text_column, label_column, max_samples)
    encoder = encoder_for(orig)
    ref = evaluate(session_for(orig, threads), encoder, ds.texts, batch_size, ds.pairs)
    got = evaluate(session_for(cand, threads), encoder, ds.texts, batch_size, ds.pairs)
    if ref.shape != got.shape:
        raise ModelError("The candidate's outputs do not match the original's shape",
                         f"original {ref.shape[1:]}, candidate {got.shape[1:]}",
                         "Compare artifacts of the same model and task")
    result = compare(ref, got, labels)
    result.update({"original": str(orig.path), "candidate": str(cand.path), "data": str(data),
                   "original_backend": _backend(orig), "candidate_backend": _backend(cand),
                   "candidate_predictions": got.argmax(-1).tolist()})
    return result


def _backend(art: Artifact) -> str:
    return {"hf": "pytorch", "onnx": "onnxruntime"}.get(art.kind, art.manifest.get("backend", "tensorrt"))
