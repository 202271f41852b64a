"""The embeddable runtime on a tiny int8 artifact: pipeline-format output, batching, errors."""

import shutil

import numpy as np
import pytest

from edgekit.errors import InputError, ModelError
from edgekit.runtime import load


def test_predict_pipeline_format(tiny_int8):
    clf = load(tiny_int8)
    out = clf.predict(["a gripping, funny film", "dull"])
    assert len(out) == 2 and all(set(o) == {"label", "score"} for o in out)
    assert all(o["label"] in ("negative", "positive") for o in out)
    assert clf.predict("fun") == clf.predict(["fun"])[0]


def test_score_is_softmax_max_of_the_model_logits(tiny_int8):
    """label/score against logits computed here: the artifact's tokenizer.json, a plain ORT session, numpy softmax."""
    import json

    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_int8 / "tokenizer.json"))
    id2label = {int(k): v for k, v in json.loads((tiny_int8 / "config.json").read_text())["id2label"].items()}
    sess = ort.InferenceSession(str(tiny_int8 / "model.onnx"), providers=["CPUExecutionProvider"])
    clf = load(tiny_int8)
    for text in ["a gripping, funny film", "dull", "the plot was long and boring but the acting was superb"]:
        enc = tok.encode(text)
        feeds = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        feeds = {i.name: np.array([feeds[i.name]], dtype=np.int64) for i in sess.get_inputs()}
        logits = sess.run(None, feeds)[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        got = clf.predict([text], batch_size=1)[0]
        assert got["label"] == id2label[int(probs.argmax())]
        assert got["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_batched_equals_one_by_one_order_kept(tiny_onnx):
    clf = load(tiny_onnx)
    texts = ["good", "the plot was long and dull", "bad acting", "fun fun fun film"]
    batched = clf.predict_proba(texts, batch_size=3)
    single = np.concatenate([clf.predict_proba([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)  # fp32: padding is masked out


def test_empty_and_non_string_input(tiny_onnx):
    clf = load(tiny_onnx)
    assert clf.predict([]) == []
    with pytest.raises(TypeError, match="item 1 is int"):
        clf.predict(["ok", 3])
    with pytest.raises(TypeError, match="not dict"):
        clf.predict({"text": "x"})


def test_missing_files_named(tiny_onnx, tmp_path):
    for missing in ("tokenizer.json", "model.onnx", "config.json"):
        broken = tmp_path / missing
        shutil.copytree(tiny_onnx, broken)
        (broken / missing).unlink()
        with pytest.raises(ModelError, match=f"missing {missing}"):
            load(broken)
    with pytest.raises(InputError, match="Unknown backend"):
        load(tiny_onnx, backend="tflite")
