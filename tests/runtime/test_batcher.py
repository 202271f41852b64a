"""DynamicBatcher on a real ONNX Runtime session (the tiny fp32 export): grouping, bounds, order, errors, close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgekit.errors import BackendError, InputError
from edgekit.runtime import DynamicBatcher, load

WORDS = "good great fun bad boring awful dull film movie plot acting not very superb moving".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))) for _ in range(n)]


@pytest.fixture(scope="module")
def clf(tiny_onnx):
    return load(tiny_onnx)  # fp32: batched results equal one-by-one results


def _concurrently(fn, args: list) -> list:
    """Call ``fn(arg)`` from one thread per arg, all released at once; results in arg order."""
    results: list = [None] * len(args)
    barrier = threading.Barrier(len(args))

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = fn(args[i])
        except Exception as exc:  # noqa: BLE001  (asserted on by the caller)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_requests_share_batches_and_get_their_own_rows(clf):
    texts = _texts(16)
    want = clf.predict_proba(texts, batch_size=1)
    with DynamicBatcher(clf, max_batch=8, max_wait_ms=500) as batcher:
        got = _concurrently(lambda t: batcher.predict_proba([t], timeout=60), texts)
        stats = batcher.stats
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)
    assert stats["requests"] == 16 and stats["texts"] == 16
    assert stats["batches"] < 16 and stats["largest_batch"] <= 8  # grouped, never above max_batch


@pytest.mark.parametrize("wait_ms", [50, 150])
def test_lone_request_waits_max_wait_then_runs(clf, wait_ms):
    """A lone request waits max_wait for company, then runs: its latency is max_wait + the model's time.

    Minimum of 5 tries on each side, so a busy machine's stalls (which only add time) do not decide it.
    """
    text = "a gripping , funny film"
    model_s = min(_timed(lambda: clf.predict(text)) for _ in range(5))
    with DynamicBatcher(clf, max_batch=64, max_wait_ms=wait_ms) as batcher:
        assert batcher.predict(text, timeout=30) == clf.predict(text)  # the same single-row batch: same numbers
        lone_s = min(_timed(lambda: batcher.predict(text, timeout=30)) for _ in range(5))
    waited_ms = (lone_s - model_s) * 1000
    assert wait_ms - 5 <= waited_ms <= wait_ms + 30, (waited_ms, model_s)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def test_mixed_sizes_keep_order_and_large_requests_are_chunked(clf):
    requests = [_texts(20, seed=1), [], _texts(3, seed=2), ["one"], _texts(7, seed=3)]
    with DynamicBatcher(clf, max_batch=8, max_wait_ms=100) as batcher:
        got = _concurrently(lambda r: batcher.predict(r, timeout=60), requests)
    for request, result in zip(requests, got):
        want = clf.predict(request)
        assert [p["label"] for p in result] == [p["label"] for p in want]
        np.testing.assert_allclose([p["score"] for p in result], [p["score"] for p in want], atol=1e-5)


def test_bad_request_fails_alone(clf):
    with DynamicBatcher(clf, max_batch=8, max_wait_ms=100) as batcher:
        got = _concurrently(lambda r: batcher.predict(r, timeout=60), [["good film"], ["ok", 7], "dull", 3.5])
    assert got[0][0]["label"] == clf.predict("good film")["label"] and got[2]["label"] == clf.predict("dull")["label"]
    assert isinstance(got[1], TypeError) and "item 1 is int" in str(got[1])
    assert isinstance(got[3], TypeError) and "not float" in str(got[3])


def test_close_drains_the_queue_then_refuses(clf):
    batcher = DynamicBatcher(clf, max_batch=4, max_wait_ms=0)
    futures = [batcher.submit(_texts(3, seed=s)) for s in range(6)]
    batcher.close(timeout=60)
    assert all(f.done() and f.result().shape == (3, 2) for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(["late"])
    batcher.close()  # a second close is a no-op


def test_full_queue_pushes_back(clf):
    with DynamicBatcher(clf, max_batch=4, max_wait_ms=0, max_queue=1) as batcher:
        busy = batcher.submit(_texts(3000, seed=4))  # keeps the worker busy well past the next two calls
        deadline = time.monotonic() + 30
        while not busy.running() and not busy.done() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert busy.running(), "the worker did not pick up the first request"
        queued = batcher.submit(["waits its turn"])
        with pytest.raises(BackendError, match="queue is full"):
            batcher.submit(["one too many"])
        assert queued.result(timeout=60).shape == (1, 2) and busy.result(timeout=60).shape == (3000, 2)


def test_batch_cap_follows_the_classifier_and_options_are_checked(tiny_onnx, clf):
    capped = load(tiny_onnx, max_batch=4)
    with DynamicBatcher(capped, max_batch=16) as batcher:
        assert batcher.max_batch == 4
    # inf killed the worker (OverflowError in its wait) and every later predict hung; True / NaN / a queue of 0
    # were taken and failed every request later
    for kwargs in ({"max_batch": 0}, {"max_batch": True}, {"max_wait_ms": -1}, {"max_wait_ms": float("inf")},
                   {"max_wait_ms": float("nan")}, {"max_wait_ms": True}, {"max_queue": 0}, {"max_queue": None},
                   {"max_queue": 1.5}):
        with pytest.raises(InputError):
            DynamicBatcher(clf, **kwargs)
    import numpy as np

    with DynamicBatcher(clf, max_batch=np.int64(4), max_wait_ms=np.float32(1)) as batcher:
        assert batcher.predict(["fine"])[0]["label"] in clf.id2label.values()
