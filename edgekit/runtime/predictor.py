"""``load(artifact)`` -> a text classifier on numpy + one backend (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError
from .session import OrtSession, Session
from .tokenizer import TextEncoder, _read_json, read_config

BACKENDS = ("auto", "onnxruntime", "tensorrt", "tensorrt-rtx")


class TextClassifier:
    """Predicts labels for texts, in the transformers ``pipeline`` output format.

    ``predict`` is safe to call from several threads at once: the tokenizer is
    immutable after construction and ONNX Runtime's ``run`` is thread-safe.
    """

    def __init__(self, session: Session, encoder: TextEncoder, id2label: dict[int, str], batch_size: int = 32):
        self.session = session
        self.encoder = encoder
        self.id2label = id2label
        self.batch_size = batch_size

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw model call: named int64 inputs -> named outputs."""
        return self.session.run(feeds)

    def logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        texts = _check_texts(texts)
        size = batch_size or self.batch_size
        if not texts:
            return np.zeros((0, len(self.id2label)), dtype=np.float32)
        # sort by length so each batch pads little, then restore the order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), len(self.id2label)), dtype=np.float32)
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            result = self.session.run(self.encoder([texts[i] for i in idx]))
            out[idx] = next(iter(result.values()))
        return out

    def predict_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return softmax(self.logits(texts, batch_size))

    def predict(self, texts: list[str] | str, batch_size: int | None = None) -> list[dict]:
        single = isinstance(texts, str)
        probs = self.predict_proba([texts] if single else texts, batch_size)
        out = [{"label": self.id2label[int(p.argmax())], "score": float(p.max())} for p in probs]
        return out[0] if single else out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def id2label_of(folder: Path, n_outputs: int | None = None) -> dict[int, str]:
    config = read_config(folder)
    raw = config.get("id2label") or {}
    mapping = {int(k): str(v) for k, v in raw.items()}
    if not mapping and n_outputs:
        mapping = {i: f"LABEL_{i}" for i in range(n_outputs)}
    return mapping


def load(artifact: str | Path, backend: str = "auto", threads: int | None = None, batch_size: int | None = None,
         device: int = 0) -> TextClassifier:
    """Load an optimized artifact folder (model.onnx + tokenizer.json + config.json).

    ``backend='auto'`` picks ONNX Runtime for ONNX artifacts. ``threads`` sets
    intra-op threads (None = backend default). ``batch_size`` None = the batch
    size the artifact was gated at by ``optimize`` (dynamic int8 results depend
    on batch composition), else 32. ``device`` is the GPU index for GPU backends.
    """
    folder = Path(artifact)
    if backend not in BACKENDS:
        raise InputError(f"Unknown backend '{backend}'", None, f"Choose one of: {', '.join(BACKENDS)}")
    if not folder.is_dir():
        raise ModelError(f"Artifact '{folder}' not found", "no such folder", "Pass the --out folder of edgekit optimize")
    if not (folder / "config.json").is_file():
        raise ModelError(f"Artifact '{folder}' is missing config.json", "its labels and sizes are read from it",
                         "Copy config.json from the original model folder")
    model = folder / "model.onnx"
    if backend in ("auto", "onnxruntime"):
        if not model.is_file():
            raise ModelError(f"Artifact '{folder}' is missing model.onnx", "the ONNX Runtime backend loads it",
                             "Pass the --out folder of edgekit optimize or export")
        session: Session = OrtSession(model, threads=threads)
    else:
        from .trt import open_engine_session  # noqa: PLC0415  (optional backend)

        session = open_engine_session(folder, backend=backend, device=device)
    encoder = TextEncoder(folder)
    session.open()
    if batch_size is None:
        batch_size = int(_read_json(folder / "manifest.json").get("eval_batch_size") or 32)
    return TextClassifier(session, encoder, id2label_of(folder), batch_size=batch_size)


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"predict() takes a string or a list of strings, not {type(texts).__name__}")
    bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        i, name = bad[0]
        raise TypeError(f"predict() takes strings only: item {i} is {name}")
    return list(texts)
