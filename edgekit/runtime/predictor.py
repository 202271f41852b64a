"""``load(artifact)`` -> a text classifier on numpy + one backend (no torch, no transformers).

Thread-safety: a :class:`TextClassifier` may be shared by any number of
threads. Its tokenizer is configured once in ``__init__`` and only read
afterwards; ONNX Runtime's ``InferenceSession.run`` is thread-safe; an engine
session serializes calls with a lock (one TensorRT execution context). Each
concurrent call runs its own batches; :class:`~edgekit.runtime.batcher.DynamicBatcher`
merges small concurrent requests into shared batches instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError
from .session import OrtSession, Session
from .tokenizer import TextEncoder, _read_json, check_unicode, model_max_length, read_config

BACKENDS = ("auto", "onnxruntime", "tensorrt", "tensorrt-rtx")
ENGINE_BACKENDS = ("tensorrt", "tensorrt-rtx")
ONNX_NAME = "model.onnx"
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class ShapeLimits:
    """Input shapes the model accepts. None = no limit beyond the tokenizer's own maximum length.

    An engine's optimization profile (its sidecar ``<engine>.json``) sets them;
    ONNX Runtime models have none.
    """

    max_batch: int | None = None
    min_batch: int = 1
    max_length: int | None = None
    min_length: int = 1
    source: str = "none"


def engine_limits(engine: str | Path) -> ShapeLimits:
    """Batch and sequence ranges of profile 0 from the engine's sidecar JSON (written by ``edgekit build``).

    Tolerant: reads ``profiles[0].batch`` / ``profiles[0].sequence`` (``[min, opt, max]``), else the build
    options' ``max_batch`` / ``max_seq``; a missing or unreadable sidecar gives no limits.
    """
    sidecar = Path(str(engine) + ".json")
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ShapeLimits()
    if not isinstance(record, dict):
        return ShapeLimits()
    profiles = record.get("profiles")
    profile = profiles[0] if isinstance(profiles, list) and profiles and isinstance(profiles[0], dict) else {}
    options = record.get("options") if isinstance(record.get("options"), dict) else {}
    batch, seq = _range(profile.get("batch")), _range(profile.get("sequence") or profile.get("seq"))
    max_batch = batch[1] if batch else _positive(options.get("max_batch"))
    max_length = seq[1] if seq else _positive(options.get("max_seq"))
    if max_batch is None and max_length is None:
        return ShapeLimits()
    return ShapeLimits(max_batch=max_batch, min_batch=batch[0] if batch else 1, max_length=max_length,
                       min_length=seq[0] if seq else 1, source=str(sidecar))


def _range(value) -> tuple[int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        lo, hi = _positive(value[0]), _positive(value[-1])
        if lo and hi and lo <= hi:
            return lo, hi
    return None


def _positive(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1 else None


class Predictor:
    """What every task's predictor shares: session, tokenizer, labels, the batch size capped by the shape limits."""

    def __init__(self, session: Session, encoder: TextEncoder, id2label: dict[int, str],
                 batch_size: int = DEFAULT_BATCH_SIZE, limits: ShapeLimits | None = None):
        self.session = session
        self.encoder = encoder
        self.id2label = id2label
        self.limits = limits or ShapeLimits()
        self.batch_size = self._capped(batch_size)

    @property
    def max_batch(self) -> int | None:
        return self.limits.max_batch

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw model call: named int64 inputs -> named outputs."""
        return self.session.run(feeds)

    def _capped(self, size: int) -> int:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise InputError(f"batch_size must be a positive integer, got {size!r}", None, None)
        return min(size, self.limits.max_batch) if self.limits.max_batch else size


class TextClassifier(Predictor):
    """Predicts labels for texts, in the transformers ``pipeline`` output format.

    ``batch_size`` is the default for ``predict``; it and any per-call batch
    size are capped at ``limits.max_batch``. Batches are padded to at least
    ``limits.min_batch`` rows (extra rows are dropped from the result).
    Safe to share between threads (see the module docstring).
    """

    def logits(self, texts: list[str], batch_size: int | None = None, pairs: list[str] | None = None) -> np.ndarray:
        """First model output for every text, in input order (batched by length to keep padding small).

        ``pairs``: the second sentence of each text, for a sentence-pair model (NLI, paraphrase), one per text."""
        texts = check_texts(texts)
        if pairs is not None:
            pairs = check_texts(pairs)
            if len(pairs) != len(texts):
                raise InputError(f"{len(texts)} texts but {len(pairs)} pairs", "each text takes one second sentence",
                                 "Pass as many pairs as texts")
        size = self._capped(self.batch_size if batch_size is None else batch_size)
        if not texts:
            return np.zeros((0, len(self.id2label)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(pairs[i]) if pairs else 0))
        out = np.empty((len(texts), len(self.id2label)), dtype=np.float32)
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            out[idx] = self._run_batch([texts[i] for i in idx], None if pairs is None else [pairs[i] for i in idx])
        return out

    def _run_batch(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        extra = [""] * max(0, self.limits.min_batch - len(texts))
        result = self.session.run(self.encoder(texts + extra, None if pairs is None else pairs + extra))
        return next(iter(result.values()))[:len(texts)]

    def predict_proba(self, texts: list[str], batch_size: int | None = None,
                      pairs: list[str] | None = None) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), num_labels)``; columns in label-id order."""
        return softmax(self.logits(texts, batch_size, pairs))

    def predict(self, texts: list[str] | str, batch_size: int | None = None,
                pairs: list[str] | str | None = None) -> list[dict] | dict:
        """``[{'label': ..., 'score': ...}, ...]``; a single string gives a single dict; ``[]`` gives ``[]``.
        ``pairs``: each text's second sentence for a sentence-pair model (a single string with a single text)."""
        single = isinstance(texts, str)
        if single and pairs is not None and not isinstance(pairs, str):
            raise TypeError("predict() with a single text takes a single pair string")
        out = self.format(self.predict_proba([texts] if single else texts, batch_size,
                                             [pairs] if single and pairs is not None else pairs))
        return out[0] if single else out

    def format(self, probs: np.ndarray) -> list[dict]:
        """Probabilities -> pipeline-format dicts (top label and its probability)."""
        return [{"label": self.id2label[int(p.argmax())], "score": float(p.max())} for p in probs]



def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def load(artifact: str | Path, backend: str = "auto", threads: int | None = None, batch_size: int | None = None,
         device: int = 0, max_batch: int | None = None, max_length: int | None = None,
         allow_failed: bool = False):
    """Load an optimized artifact folder (model.onnx or an engine, with tokenizer.json and config.json).

    Returns the predictor of the artifact's task (its manifest's ``task``, else config.json's
    architecture): a :class:`TextClassifier` for text classification, a
    :class:`~edgekit.runtime.tokens.TokenClassifier` for token classification. An artifact whose
    manifest records a failed accuracy gate (``passed: false``) is refused with a ModelError unless
    ``allow_failed=True``.

    ``backend='auto'`` picks ONNX Runtime when the folder holds model.onnx,
    else the engine's backend recorded in its sidecar. ``threads``: ONNX
    Runtime intra-op threads (None = its default). ``batch_size`` None = the
    batch size the artifact was gated at by ``optimize`` (dynamic int8 results
    depend on batch composition), else 32. ``device``: GPU index for engine
    backends. ``max_batch`` / ``max_length`` cap batch rows and tokens per text
    (None = the engine profile's maxima; for ONNX Runtime, no batch cap and the
    model's own maximum length); they can only lower an engine's limits.
    """
    folder = Path(artifact)
    from .generate import is_generation_folder, load_generator

    if is_generation_folder(folder):  # a causal LM: TextGenerator (generate, stream) on its own engines
        given = {"backend": backend != "auto", "batch_size": batch_size is not None, "device": device != 0,
                 "max_batch": max_batch is not None, "max_length": max_length is not None}
        ignored = [name for name, set_ in given.items() if set_]
        if ignored:  # each was accepted and ignored (backend='bogus', device=3, batch_size=0 ...)
            raise InputError(f"{', '.join(ignored)} do{'es' if len(ignored) == 1 else ''} not apply to the causal LM in "
                             f"'{folder}'", "load() gives it a TextGenerator, which picks its own engine and takes "
                             "one prompt (or a list) per call", "Leave them out, or call load_generator(folder, "
                             "engine='ort' | 'genai' | 'tensorrt-rtx', threads=N)")
        _refuse_failed(folder, allow_failed)
        return load_generator(folder, engine="auto", threads=threads)
    from ..tasks import causal_lm_architectures  # noqa: PLC0415  (pure Python: no torch)

    causal = causal_lm_architectures(folder)
    if causal:
        raise ModelError(f"'{folder}' holds a causal LM ({', '.join(causal)}) but no manifest.json or "
                         "genai_config.json", "nothing says which text-generation artifact it is",
                         "Pass the folder edgekit export-lm / optimize-lm wrote, with its manifest.json")
    backend = resolve_backend(folder, backend)
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise InputError(f"device must be a GPU index (0, 1, ...), got {device!r}", None, "Leave it out for GPU 0")
    if device and backend == "onnxruntime":  # it was accepted and ignored
        raise InputError(f"device={device} applies to engine backends only", "ONNX Runtime here runs on the CPU",
                         "Leave device out, or load an engine folder")
    task = _servable_task(folder, allow_failed)
    model_file = ONNX_NAME if backend == "onnxruntime" else None
    _check_files(folder, ["config.json", "tokenizer.json"] + ([model_file] if model_file else []), backend)
    limits = ShapeLimits()
    if backend == "onnxruntime":
        session: Session = OrtSession(folder / ONNX_NAME, threads=threads)
    else:
        from .trt import find_engine, open_engine_session  # noqa: PLC0415  (optional backend)

        limits = engine_limits(find_engine(folder))
        session = open_engine_session(folder, backend=backend, device=device)
    limits = _override(limits, max_batch, max_length)
    lengths = [n for n in (limits.max_length, model_max_length(folder)) if n]
    encoder = TextEncoder(folder, max_length=min(lengths), min_length=limits.min_length)
    session.open()
    if batch_size is None:
        batch_size = _gated_batch(folder)
    return _predictor_class(task)(session, encoder, _labels(folder, session, task), batch_size=batch_size,
                                  limits=limits)


def _gated_batch(folder: Path) -> int:
    """The batch the artifact was gated at (its manifest's ``eval_batch_size``), else DEFAULT_BATCH_SIZE."""
    size = _read_json(folder / "manifest.json").get("eval_batch_size")
    if size is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ModelError(f"manifest.json in '{folder}' has a malformed eval_batch_size",
                         f"expected a whole number >= 1, got {json.dumps(size)[:60]}",
                         "Pass batch_size= to load(), or restore manifest.json from edgekit's output")
    return size


def _labels(folder: Path, session: Session, task: str) -> dict[int, str]:
    """config.json's id2label, checked against the model's output width where the graph fixes it.

    A missing or malformed label map, or one whose size is not the model's,
    would only surface at the first ``predict`` (as a numpy shape error, or
    labels silently off by one): refused here, at load, in one line.
    """
    config = read_config(folder)
    if not config:
        raise ModelError(f"config.json in '{folder}' cannot be read as a model config",
                         "it is not a JSON object (corrupt or truncated?)",
                         "Copy config.json from the model the artifact was made from")
    raw = config.get("id2label") or {}
    try:
        labels = {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        labels = None
    if labels is None or sorted(labels) != list(range(len(labels))):
        raise ModelError(f"config.json in '{folder}' has a malformed id2label",
                         f"expected label ids 0..N-1 mapped to names, got {json.dumps(raw)[:80]}",
                         "Copy config.json from the model the artifact was made from")
    shapes = getattr(session, "output_shapes", None) or []  # an engine session has none
    from ..tasks import TASKS  # noqa: PLC0415

    rank = 3 if TASKS[task].per_token else 2
    if shapes and shapes[0] and len(shapes[0]) != rank:  # a manifest's task that the graph is not
        raise ModelError(f"Artifact '{folder}' says it is a {task} model but its model.onnx is not one",
                         f"its first output has {len(shapes[0])} axes; {task} gives {rank}",
                         "Restore manifest.json from edgekit's output, or re-export the model")
    width = shapes[0][-1] if shapes and shapes[0] and isinstance(shapes[0][-1], int) else None
    if not labels and width:
        return {i: f"LABEL_{i}" for i in range(width)}
    if width and task in ("text-classification", "token-classification") and len(labels) != width:
        raise ModelError(f"config.json in '{folder}' names {len(labels)} labels but the model scores {width}",
                         "its id2label does not belong to this model.onnx",
                         "Copy config.json from the model the artifact was made from")
    return labels


def _predictor_class(task: str):
    """The runtime class the task's entry names (``edgekit.tasks.TASKS[task].predictor``)."""
    from .. import runtime  # noqa: PLC0415  (the package: every predictor class is exported there)
    from ..tasks import TASKS  # noqa: PLC0415

    return getattr(runtime, TASKS[task].predictor)


def _servable_task(folder: Path, allow_failed: bool) -> str:
    """The artifact's task, refusing ones the runtime does not serve and (unless allowed) failed gates."""
    from ..tasks import TASKS, task_of  # noqa: PLC0415  (pure Python: no torch)

    _refuse_failed(folder, allow_failed)
    task = task_of(folder)
    served = [name for name, spec in TASKS.items() if spec.predictor]
    if task not in served:
        raise ModelError(f"Artifact '{folder}' is a {task} model", f"the runtime serves {', '.join(served)}",
                         "Load it with ONNX Runtime directly (edgekit.runtime.OrtSession)")
    return task


def _refuse_failed(folder: Path, allow_failed: bool) -> None:
    """A ModelError for an artifact whose manifest records a failed gate, unless ``allow_failed``."""
    if _read_json(folder / "manifest.json").get("passed") is False and not allow_failed:
        raise ModelError(f"Artifact '{folder}' failed its accuracy gate", "its manifest.json says passed: false",
                         "Fix the model or the budget and re-run edgekit optimize, or pass allow_failed=True to "
                         "load it anyway")


def resolve_backend(folder: Path, backend: str) -> str:
    """The concrete backend for ``folder``: 'auto' becomes onnxruntime or the engine's recorded backend."""
    if backend not in BACKENDS:
        raise InputError(f"Unknown backend '{backend}'", None, f"Choose one of: {', '.join(BACKENDS)}")
    if folder.is_file():
        raise ModelError(f"Artifact '{folder}' is a file", "load() takes the artifact's folder (model and tokenizer)",
                         f"Pass its folder, '{folder.parent}'")
    if not folder.is_dir():
        raise ModelError(f"Artifact '{folder}' not found", "no such folder", "Pass the --out folder of edgekit optimize")
    if backend != "auto":
        return backend
    if (folder / ONNX_NAME).is_file():
        return "onnxruntime"
    from .trt import ENGINE_SUFFIXES, engine_backend  # noqa: PLC0415  (light: no TensorRT import)

    engines = sorted(p for p in folder.iterdir() if p.suffix in ENGINE_SUFFIXES)
    if engines:
        built = engine_backend(engines[0])
        return built if built in ENGINE_BACKENDS else "tensorrt"
    return "onnxruntime"  # reported below as a missing model.onnx


_WHY = {"config.json": "its labels and sizes", "tokenizer.json": "the tokenizer (tokenizers library)",
        ONNX_NAME: "the ONNX model"}


def _check_files(folder: Path, names: list[str], backend: str) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        why = "; ".join(f"{n} holds {_WHY[n]}" for n in missing)
        raise ModelError(f"Artifact '{folder}' is missing {', '.join(missing)}", f"{why} (backend {backend})",
                         "Pass the --out folder of edgekit optimize (or export), or copy the file(s) from the "
                         "original model folder")


#: the fewest tokens per text a max_length may leave: the special tokens ([CLS] ... [SEP]) and one of the text
MIN_MAX_LENGTH = 3


def _override(limits: ShapeLimits, max_batch: int | None, max_length: int | None) -> ShapeLimits:
    for name, value in (("max_batch", max_batch), ("max_length", max_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a positive whole number, got {value!r}", None,
                             "Leave it out for the engine's (or the model's) own limit")
    if max_length is not None and max_length < MIN_MAX_LENGTH:
        raise InputError(f"max_length must be at least {MIN_MAX_LENGTH}, got {max_length}",
                         "the special tokens take two positions and the text needs one",
                         "Leave it out for the model's own limit")  # 2 scored [CLS][SEP] alone; 1 turned truncation off
    if max_batch is None and max_length is None:
        return limits
    return ShapeLimits(max_batch=_lowest(max_batch, limits.max_batch), min_batch=limits.min_batch,
                       max_length=_lowest(max_length, limits.max_length), min_length=limits.min_length,
                       source="load() arguments" if limits.source == "none" else limits.source)


def _lowest(*values: int | None) -> int | None:
    """The smallest given cap (None = no cap): an explicit cap can only lower an engine's."""
    return min((v for v in values if v), default=None)


def check_texts(texts) -> list[str]:
    """``texts`` as a list of strings, or a TypeError naming the first bad item (an InputError for a string that
    is not valid Unicode: a lone surrogate, which the tokenizer refuses with an unhelpful TypeError)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"predict() takes a string or a list of strings, not {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"predict() takes strings only: item {i} is {type(t).__name__}")
        check_unicode(t, f"Text {i}")
    return list(texts)

