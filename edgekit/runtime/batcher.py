"""Dynamic batching: merge small concurrent requests into shared model batches.

A server thread per request calls ``batcher.predict(texts)``; one worker
thread takes the first waiting request, keeps collecting more for up to
``max_wait_ms`` or until ``max_batch`` texts are gathered, runs them as one
call of the classifier, and hands each caller its own rows. Under load this
trades a few milliseconds of waiting for fewer, fuller model calls.

Batched results equal one-by-one results for fp32 and fp16 models (padding is
masked out). Dynamic int8 models (``quantize --target cpu``) compute
activation scales per batch, so a text's scores can shift slightly with the
texts it is batched with; ``optimize --eval-batch-size`` gates accuracy at a
chosen batch size.
"""

from __future__ import annotations

import numbers
import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from ..errors import BackendError, InputError
from .predictor import TextClassifier, check_texts

_STOP = object()


class _Request:
    __slots__ = ("texts", "future")

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.future: Future = Future()


#: the longest a group may wait for company (ms): longer is a misconfiguration, not a batching policy
MAX_WAIT_MS = 60_000


class DynamicBatcher:
    """Thread-safe front of a :class:`TextClassifier` that groups concurrent requests.

    ``max_batch``: most texts per model call (capped at the classifier's
    engine limit; one request larger than this still runs, in chunks).
    ``max_wait_ms``: how long the first request of a group waits for company
    (0 = only what is already queued). ``max_queue``: waiting requests beyond
    which ``submit`` raises BackendError instead of queueing (backpressure).
    Use as a context manager, or call ``close()``: it finishes the queued
    requests, then stops the worker.
    """

    def __init__(self, classifier: TextClassifier, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 1024):
        if not isinstance(classifier, TextClassifier):
            raise InputError(f"DynamicBatcher batches text classifiers, not {type(classifier).__name__}", None,
                             "Call the token classifier's predict directly")
        def whole(value) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        if not whole(max_batch) or max_batch < 1:
            raise InputError(f"max_batch must be a positive integer, got {max_batch!r}", None, None)
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, numbers.Real) \
                or not 0 <= max_wait_ms <= MAX_WAIT_MS:  # NaN fails too; inf overflowed the worker's wait and killed it
            raise InputError(f"max_wait_ms must be a number from 0 to {MAX_WAIT_MS}, got {max_wait_ms!r}", None,
                             "A few ms is typical: the first request of a group waits this long for company")
        if not whole(max_queue) or max_queue < 1:  # 0 or less made every submit fail with "queue is full"
            raise InputError(f"max_queue must be a positive integer, got {max_queue!r}", None, None)
        max_batch, max_queue = int(max_batch), int(max_queue)
        self.classifier = classifier
        self.max_batch = min(max_batch, classifier.max_batch or max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue + 1)  # +1: room for the stop marker
        self._carry = None
        self._lock = threading.Lock()
        self._closed = False
        self._stats = {"requests": 0, "texts": 0, "batches": 0, "largest_batch": 0}
        self._worker = threading.Thread(target=self._loop, name="edgekit-dynamic-batcher", daemon=True)
        self._worker.start()

    def __enter__(self) -> "DynamicBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stats(self) -> dict:
        """Counts so far: requests, texts, batches (model calls by the worker), largest_batch (texts)."""
        with self._lock:
            return dict(self._stats)

    def submit(self, texts: list[str] | str) -> Future:
        """Queue ``texts``; the Future resolves to their probabilities, shape ``(len(texts), num_labels)``.

        Bad input raises TypeError here, in the caller's thread, and never reaches the shared batch.
        """
        request = _Request(check_texts(texts))
        if not request.texts:
            request.future.set_result(np.zeros((0, len(self.classifier.id2label)), dtype=np.float32))
            return request.future
        with self._lock:
            if self._closed:
                raise RuntimeError("DynamicBatcher is closed")
            if self._queue.qsize() >= self.max_queue:
                raise BackendError("Dynamic batcher queue is full", f"{self.max_queue} requests are waiting",
                                   "Retry later, or raise max_queue")
            self._queue.put_nowait(request)
        return request.future

    def predict_proba(self, texts: list[str] | str, timeout: float | None = None) -> np.ndarray:
        return self.submit(texts).result(timeout)

    def predict(self, texts: list[str] | str, timeout: float | None = None) -> list[dict] | dict:
        """Like ``TextClassifier.predict``: pipeline-format dicts; blocks until this request's batch ran."""
        out = self.classifier.format(self.predict_proba(texts, timeout))
        return out[0] if isinstance(texts, str) else out

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the worker. Later ``submit`` calls raise RuntimeError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout)

    def _loop(self) -> None:
        while True:
            first = self._carry if self._carry is not None else self._queue.get()
            self._carry = None
            if first is _STOP:
                return
            self._run(self._gather(first))

    def _gather(self, first: _Request) -> list[_Request]:
        """``first`` plus what arrives within ``max_wait`` while the group stays within ``max_batch`` texts."""
        group, count = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP or count + len(item.texts) > self.max_batch:
                self._carry = item  # starts the next group (or stops the worker after this one)
                break
            group.append(item)
            count += len(item.texts)
        return group

    def _run(self, group: list[_Request]) -> None:
        live = [r for r in group if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        texts = [t for r in live for t in r.texts]
        try:
            probs = self.classifier.predict_proba(texts, batch_size=self.max_batch)
        except Exception as exc:  # noqa: BLE001  (handed to every caller of this batch)
            for r in live:
                r.future.set_exception(exc)
            return
        start = 0
        for r in live:
            r.future.set_result(probs[start:start + len(r.texts)])
            start += len(r.texts)
        with self._lock:
            self._stats["requests"] += len(live)
            self._stats["texts"] += len(texts)
            self._stats["batches"] += -(-len(texts) // self.max_batch)
            self._stats["largest_batch"] = max(self._stats["largest_batch"], min(len(texts), self.max_batch))
