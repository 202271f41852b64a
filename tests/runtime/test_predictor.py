"""load() on artifacts made by optimize and build: engine-profile limits, thread-safety, bad input.

(tests/unit/test_runtime.py covers the pipeline format, batched == one-by-one, and single missing files.)
"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from edgekit.deps import available
from edgekit.errors import BackendError, EdgekitError, InputError, ModelError
from edgekit.runtime import ShapeLimits, TextClassifier, engine_limits, load
from edgekit.runtime.predictor import resolve_backend
from edgekit.runtime.session import OrtSession
from edgekit.runtime.tokenizer import TextEncoder

TEXTS = ["a gripping , funny film", "dull", "the plot was long and boring but the acting was superb .",
         "", "not very good", "fun fun fun film with a moving ending that never lets up"]


def _gpus() -> list:
    from edgekit.runtime.trt import cuda_devices

    return cuda_devices()[0]


def test_predictions_equal_check_on_the_gated_data(tiny_optimized, tiny_data):
    from edgekit.check import check
    from edgekit.data import load_dataset

    clf = load(tiny_optimized)
    assert clf.batch_size == 1  # the batch size optimize gated at (manifest eval_batch_size)
    checked = check(tiny_optimized, tiny_optimized, tiny_data, batch_size=clf.batch_size)
    labels = [p["label"] for p in clf.predict(load_dataset(tiny_data).texts)]
    assert labels == [clf.id2label[i] for i in checked["candidate_predictions"]]


def test_explicit_caps_bound_every_batch_and_text(tiny_onnx):
    clf = load(tiny_onnx, max_batch=2, max_length=8)
    shapes = []
    real_run = clf.session.run

    def recording_run(feeds):  # a spy on the real ONNX Runtime session: records shapes, runs the model
        shapes.append(feeds["input_ids"].shape)
        return real_run(feeds)

    clf.session.run = recording_run
    got = clf.predict_proba(TEXTS, batch_size=32)
    assert clf.batch_size == 2 and clf.encoder.max_length == 8
    assert len(shapes) == 3 and all(rows <= 2 and seq <= 8 for rows, seq in shapes)
    # each text is cut to its first 8 tokens: the same as an uncapped model fed the cut ids
    full = load(tiny_onnx)
    cut = TextEncoder(tiny_onnx, max_length=8)
    want = np.concatenate([full.run(cut([t]))["logits"] for t in TEXTS])
    np.testing.assert_allclose(got, _softmax(want), atol=1e-5)


def test_min_batch_and_min_length_padding_keep_results(tiny_onnx):
    folder = tiny_onnx
    limits = ShapeLimits(max_batch=4, min_batch=3, max_length=32, min_length=12, source="test")
    session = OrtSession(folder / "model.onnx").open()
    clf = TextClassifier(session, TextEncoder(folder, max_length=32, min_length=12), {0: "negative", 1: "positive"},
                         batch_size=8, limits=limits)
    assert clf.encoder(["good"])["input_ids"].shape == (1, 12)
    got = clf.predict_proba(["good", "bad acting"])
    want = load(folder).predict_proba(["good", "bad acting"])
    assert got.shape == (2, 2) and clf.batch_size == 4
    np.testing.assert_allclose(got, want, atol=1e-5)  # fp32: pad rows and pad tokens are masked out


@pytest.mark.parametrize("record, want", [
    ({"profiles": [{"batch": [1, 8, 16], "sequence": [2, 64, 128]}]}, (16, 1, 128, 2)),
    ({"options": {"max_batch": 4, "max_seq": 32}}, (4, 1, 32, 1)),       # older sidecars: build options only
    ({"profiles": [{"batch": "?", "sequence": [1, 2]}]}, (None, 1, 2, 1)),  # malformed batch: no batch cap
    ({"backend": "tensorrt-rtx"}, (None, 1, None, 1)),                     # no shape information at all
    ([1, 2, 3], (None, 1, None, 1)),                                      # not an object
])
def test_engine_limits_are_tolerant(record, want, tmp_path):
    engine = tmp_path / "model.engine"
    (tmp_path / "model.engine.json").write_text(json.dumps(record))
    limits = engine_limits(engine)
    assert (limits.max_batch, limits.min_batch, limits.max_length, limits.min_length) == want
    (tmp_path / "model.engine.json").write_text("{not json")
    assert engine_limits(engine) == ShapeLimits()


@pytest.mark.tensorrt_rtx
@pytest.mark.skipif(not available("tensorrt_rtx"), reason="tensorrt_rtx not installed (pip install 'edgekit[rtx]')")
def test_real_engine_sidecar_sets_the_limits(tiny_onnx, tmp_path):
    from edgekit.engine import BuildOptions, build

    folder = tmp_path / "engine"
    build(tiny_onnx, folder / "model.engine", BuildOptions(backend="tensorrt-rtx", precision="fp32",
                                                          compute_capabilities=["8.6"], max_batch=4, opt_batch=2,
                                                          min_seq=1, opt_seq=8, max_seq=16))
    limits = engine_limits(folder / "model.engine")
    assert (limits.max_batch, limits.max_length, limits.min_batch, limits.min_length) == (4, 16, 1, 1)
    assert resolve_backend(folder, "auto") == "tensorrt-rtx"  # no model.onnx: the sidecar's backend
    if _gpus():
        clf = load(folder)
        assert clf.batch_size == 4 and clf.encoder.max_length == 16
        ref = load(tiny_onnx, max_length=16)
        assert [p["label"] for p in clf.predict(TEXTS * 3)] == [p["label"] for p in ref.predict(TEXTS * 3)]
    else:
        with pytest.raises(BackendError, match="No CUDA GPU found") as err:
            load(folder)
        assert "\n" not in str(err.value)


def test_concurrent_predicts_equal_serial(tiny_optimized):
    clf = load(tiny_optimized)
    texts = TEXTS * 4
    want = clf.predict(texts)
    results: dict[int, list] = {}
    barrier = threading.Barrier(8)

    def worker(k: int) -> None:
        barrier.wait(timeout=30)
        results[k] = clf.predict(texts[k:] + texts[:k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == list(range(8))
    for k, got in results.items():
        assert got == want[k:] + want[:k]


def test_missing_files_are_named_together_on_one_line(tiny_optimized, tmp_path):
    broken = shutil.copytree(tiny_optimized, tmp_path / "broken")
    (broken / "tokenizer.json").unlink()
    (broken / "model.onnx").unlink()
    with pytest.raises(ModelError) as err:
        load(broken)
    message = str(err.value)
    assert "missing tokenizer.json, model.onnx" in message and "\n" not in message
    with pytest.raises(ModelError, match="not found"):
        load(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="No engine in"):
        load(tiny_optimized, backend="tensorrt")


def test_empty_and_bad_inputs(tiny_optimized):
    clf = load(tiny_optimized)
    assert clf.predict([]) == [] and clf.predict(()) == []
    assert clf.predict_proba([]).shape == (0, 2)
    assert clf.predict(("good", "bad")) == clf.predict(["good", "bad"])
    for bad, name in ((["ok", None], "item 1 is NoneType"), ([b"bytes"], "item 0 is bytes"), (42, "not int")):
        with pytest.raises(TypeError, match=name):
            clf.predict(bad)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        clf.predict(["x"], batch_size=0)
    for kwargs in ({"max_batch": 0}, {"max_length": -3}):
        with pytest.raises(InputError, match="must be a positive whole number"):
            load(tiny_optimized, **kwargs)


def test_a_lone_surrogate_and_bad_threads_are_one_line_errors(tiny_optimized):
    clf = load(tiny_optimized)
    with pytest.raises(InputError, match="Text 1 is not valid Unicode: surrogates not allowed"):
        clf.predict(["fine", "bad \ud800 text"])  # was the tokenizer's TypeError: TextEncodeInput must be ...
    assert clf.predict("caf\u00e9 \U0001f3ac")["label"] in clf.id2label.values()
    for threads in ("2", 10**5, -1):
        with pytest.raises(InputError, match="threads must be a whole number from 1 to"):
            load(tiny_optimized, threads=threads)


@pytest.mark.parametrize("file,edit,message", [
    ("config.json", lambda c: "{nope", "cannot be read as a model config"),
    ("config.json", lambda c: json.dumps({**c, "id2label": {"0": "NEG"}}), "names 1 labels but the model scores 2"),
    ("config.json", lambda c: json.dumps({**c, "id2label": ["NEG", "POS"]}), "has a malformed id2label"),
    ("config.json", lambda c: json.dumps({**c, "id2label": {"neg": "NEG", "pos": "POS"}}), "malformed id2label"),
    ("manifest.json", lambda m: json.dumps({**m, "eval_batch_size": "abc"}), "malformed eval_batch_size"),
    ("manifest.json", lambda m: json.dumps({**m, "eval_batch_size": -4}), "malformed eval_batch_size"),
])
def test_load_checks_labels_and_batch_against_the_model(tiny_optimized, tmp_path, file, edit, message):
    """Each of these loaded and failed at the first predict (a numpy shape error, AttributeError, ValueError)."""
    broken = shutil.copytree(tiny_optimized, tmp_path / "broken")
    (broken / file).write_text(edit(json.loads((broken / file).read_text())))
    with pytest.raises(ModelError, match=message) as err:
        load(broken)
    assert "\n" not in str(err.value)


def test_a_config_without_labels_gets_the_models_width(tiny_optimized, tmp_path):
    bare = shutil.copytree(tiny_optimized, tmp_path / "bare")
    config = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("id2label", "label2id")}))
    assert load(bare).id2label == {0: "LABEL_0", 1: "LABEL_1"}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_load_refuses_an_artifact_that_failed_its_gate(tiny_optimized, tmp_path):
    failed = shutil.copytree(tiny_optimized, tmp_path / "failed")
    manifest = json.loads((failed / "manifest.json").read_text())
    assert manifest["passed"] is True and manifest["task"] == "text-classification"
    manifest["passed"] = False
    (failed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError) as err:
        load(failed)
    assert "failed its accuracy gate" in str(err.value) and "allow_failed=True" in str(err.value)
    assert "\n" not in str(err.value)
    clf = load(failed, allow_failed=True)
    assert isinstance(clf, TextClassifier)
    assert clf.predict(TEXTS) == load(tiny_optimized).predict(TEXTS)


def test_load_refuses_what_it_would_serve_wrongly(tiny_optimized, tmp_path):
    """max_length 2 scored [CLS][SEP] alone for every text, 1 turned truncation off (an ONNX Runtime error on a
    long text), 2.5 was a TypeError; a model file was 'not found'; a manifest naming another task made up
    entities from a sentence classifier."""
    for value, message in ((2, "max_length must be at least 3"), (1, "max_length must be at least 3"),
                           (2.5, "max_length must be a positive whole number"),
                           (True, "max_length must be a positive whole number")):
        with pytest.raises(InputError, match=message):
            load(tiny_optimized, max_length=value)
    with pytest.raises(InputError, match="max_batch must be a positive whole number, got 1.5"):
        load(tiny_optimized, max_batch=1.5)
    assert load(tiny_optimized, max_length=3).predict("good film") is not None
    with pytest.raises(ModelError, match="is a file.*Pass its folder"):
        load(tiny_optimized / "model.onnx")
    for device, message in ((-1, "device must be a GPU index"), (1, "device=1 applies to engine backends only")):
        with pytest.raises(InputError, match=message):  # each was accepted and ignored on ONNX Runtime
            load(tiny_optimized, device=device)
    wrong = tmp_path / "wrong-task"
    shutil.copytree(tiny_optimized, wrong)
    manifest = json.loads((wrong / "manifest.json").read_text())
    (wrong / "manifest.json").write_text(json.dumps({**manifest, "task": "token-classification"}))
    with pytest.raises(ModelError, match="says it is a token-classification model but its model.onnx is not one"):
        load(wrong)


def test_bench_end_to_end_refuses_a_model_file_that_load_would_not_run(tiny_optimized, tmp_path):
    """bench FOLDER/model.int8.onnx --end-to-end timed FOLDER/model.onnx, and reported it as the file named."""
    from edgekit.bench import BenchOptions, bench

    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_optimized, mixed)
    shutil.copy(mixed / "model.onnx", mixed / "model.int8.onnx")
    options = BenchOptions(iterations=2, warmup=1, end_to_end=True)
    with pytest.raises(InputError, match="--end-to-end times what edgekit.runtime.load runs from .*not 'model.int8.onnx'"):
        bench(mixed / "model.int8.onnx", None, options)
    assert bench(mixed / "model.onnx", None, options)["latency_ms"]["p50"] > 0


def test_raw_run_takes_narrower_ids_and_refuses_bad_feeds_in_one_line(tiny_optimized):
    """run(feeds) passed ONNX Runtime's own exceptions through (InvalidArgument, Fail, a ValueError listing the
    required inputs) and refused int32 ids outright."""
    clf = load(tiny_optimized)
    feeds = clf.encoder(["a good film"])
    want = clf.run(feeds)
    narrow = clf.run({k: v.astype(np.int32) for k, v in feeds.items()})
    assert all(np.array_equal(want[k], narrow[k]) for k in want)
    bad = {"rank": {k: v[0] for k, v in feeds.items()},
           "vocabulary": {**feeds, "input_ids": np.full_like(feeds["input_ids"], 10 ** 6)},
           "missing": {k: v for k, v in feeds.items() if k != "input_ids"}}
    for name, given in bad.items():
        with pytest.raises(EdgekitError) as err:
            clf.run(given)
        assert "\n" not in err.value.message, name
    with pytest.raises(InputError, match="Model inputs missing: input_ids"):
        clf.run(bad["missing"])


def test_sentence_pairs_are_scored_as_pairs(tiny_onnx):
    """A sentence-pair model (gated on pairs by check) could only be given single texts by the runtime."""
    clf = load(tiny_onnx, batch_size=3)
    texts, pairs = ["a good film", "the plot", "dull acting was bad"], ["it was fun", "never lets up", "boring"]
    got = clf.predict_proba(texts, pairs=pairs)
    session = OrtSession(tiny_onnx / "model.onnx")
    for i in range(len(texts)):  # one pair at a time, straight through ONNX Runtime
        want = session.run(clf.encoder([texts[i]], [pairs[i]]))
        assert np.allclose(got[i], np.exp(want["logits"][0]) / np.exp(want["logits"][0]).sum(), atol=1e-5)
    assert np.abs(got - clf.predict_proba(texts)).max() > 1e-6  # the second sentence is read (a random tiny model)
    assert clf.predict(texts[0], pairs=pairs[0]) == clf.predict([texts[0]], pairs=[pairs[0]])[0]
    with pytest.raises(InputError, match="3 texts but 2 pairs"):
        clf.predict(texts, pairs=pairs[:2])
