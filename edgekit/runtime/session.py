"""Runtime sessions: one small protocol over every backend.

A session knows its input and output names, runs ``dict[str, ndarray] ->
dict[str, ndarray]``, and is a context manager that does its expensive setup
on enter. Timing lives in ``edgekit.bench``, not here.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np

from ..errors import BackendError, InputError, ModelError, first_line


class Session:
    """Base protocol. Subclasses implement ``_open`` and ``_run``."""

    backend = "none"
    input_names: list[str]
    output_names: list[str]

    def __enter__(self) -> "Session":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> "Session":
        return self

    def close(self) -> None:
        pass

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def feeds(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keep only the inputs this model declares (e.g. drop token_type_ids)."""
        return {k: v for k, v in encoded.items() if k in self.input_names}


class OrtSession(Session):
    """ONNX Runtime on the given providers (CPU by default).

    ``threads`` sets intra-op threads (None = ONNX Runtime's default, one per
    physical core). Thread-safe for concurrent ``run`` calls, as ONNX
    Runtime's ``InferenceSession.run`` is.
    """

    backend = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        self.model_path = Path(model_path)
        self.threads = threads
        if isinstance(providers, str):  # one name: iterated, it was "provider C, P, U, ... is not available"
            providers = [providers]
        self.providers = list(providers or ["CPUExecutionProvider"])
        self._sess = None
        self._int64_inputs: set[str] = set()
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.output_shapes: list[list] = []   # per output: ints where fixed, names or None where dynamic
        check_threads(threads)

    def open(self) -> "OrtSession":
        if self._sess is not None:
            return self
        from ..deps import require

        ort = require("onnxruntime")
        if not self.model_path.is_file():
            raise ModelError(f"ONNX model '{self.model_path}' not found", "no such file",
                             "Pass an artifact folder that holds model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendError(f"ONNX Runtime provider {', '.join(missing)} is not available",
                               f"this onnxruntime offers {', '.join(available)}",
                               "Install onnxruntime-gpu (pip install 'edgekit[gpu]') for CUDA/TensorRT providers")
        try:
            self._sess = ort.InferenceSession(str(self.model_path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelError(f"ONNX Runtime cannot load '{self.model_path}'", first_line(exc, 300),
                             "Re-export the model with edgekit export; the file may be corrupt or truncated") from None
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self._int64_inputs = {i.name for i in self._sess.get_inputs() if i.type == "tensor(int64)"}
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self.output_shapes = [list(o.shape) for o in self._sess.get_outputs()]
        return self

    def close(self) -> None:
        self._sess = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named inputs -> named outputs. Integer ids of another width are widened to the model's int64; inputs
        ONNX Runtime refuses (a name missing, a wrong rank, ids past the vocabulary, more tokens than the model's
        positions) are an InputError with its reason, not its own exception types."""
        if self._sess is None:
            self.open()
        given = self.feeds(feeds)
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise InputError(f"Model inputs missing: {', '.join(missing)}", f"got {', '.join(feeds) or 'none'}",
                             "Pass what encoder(texts) makes (input_ids, attention_mask, ...)")
        for name, value in given.items():
            if name in self._int64_inputs and isinstance(value, np.ndarray) and value.dtype.kind in "iu" \
                    and value.dtype != np.int64:
                given[name] = value.astype(np.int64)
        try:
            outputs = self._sess.run(None, given)
        except Exception as exc:  # noqa: BLE001  (onnxruntime's Fail / InvalidArgument / RuntimeException types)
            # the inputs (a wrong rank, ids past the vocabulary, too many tokens) or the model (a broken rewrite,
            # out of memory): ONNX Runtime's reason says which
            raise BackendError(f"ONNX Runtime failed running '{self.model_path}'", first_line(exc, 300),
                               "Check the inputs (int64 [batch, tokens] within the vocabulary and maximum length, "
                               "as encoder(texts) makes them); if they are right, re-export the model") from None
        return dict(zip(self.output_names, outputs))


def max_threads() -> int:
    """The most threads a session may be given: 4x the logical CPUs, at least 64 (more only thrashes; 100,000
    ran a machine out of memory and crashed ONNX Runtime's and torch's thread pools)."""
    return max(64, 4 * (os.cpu_count() or 1))


def check_threads(threads, flag: str = "threads") -> None:
    """An InputError unless ``threads`` is None, 0 (the runtime's default) or a whole number up to max_threads()."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or not 0 <= threads <= max_threads():
        raise InputError(f"{flag} must be a whole number from 1 to {max_threads()}, got {threads!r}",
                         "more threads than 4 per CPU (or 64) only thrash", "Leave it out to use every usable core")


def default_threads() -> int:
    """Physical cores when known, else logical CPUs available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
