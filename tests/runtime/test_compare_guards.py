"""check and interleaved bench refuse pairs they would compare wrongly: other labels, another tokenizer.

Each case was a wrong figure or a traceback: a candidate serving its labels swapped passed ``check`` with no
drop; a stale label2id scored a 0.90 model at 0.10; a candidate with another vocabulary was fed the original's
token ids (an ONNX Runtime Gather error, or silently other words).
"""

from __future__ import annotations

import json
import shutil

import pytest

from edgekit.check import check
from edgekit.errors import InputError, ModelError
from edgekit.paired import PairedOptions, compare


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _copy(src, dst):
    shutil.copytree(src, dst)
    (dst / "manifest.json").unlink(missing_ok=True)  # edited by hand: an ONNX folder, not edgekit's artifact
    return dst


def test_a_candidate_with_its_labels_swapped_is_refused(tiny_onnx, tiny_int8, tiny_data, tmp_path):
    swapped = _copy(tiny_int8, tmp_path / "swapped")

    def swap(config):
        config["id2label"] = {"0": "positive", "1": "negative"}
        config["label2id"] = {"positive": 0, "negative": 1}
    _edit_json(swapped / "config.json", swap)
    with pytest.raises(ModelError) as err:
        check(tiny_onnx, swapped, tiny_data, max_samples=8)
    assert "candidate's labels are not the original's" in err.value.message
    assert "class 0 is 'negative' in the original and 'positive' in the candidate" in err.value.message


def test_labels_are_read_through_id2label_as_the_runtime_serves_them(tiny_onnx, tiny_int8, tiny_data, tmp_path):
    names = tmp_path / "names.tsv"
    rows = tiny_data.read_text().splitlines()
    kept = [r for i, r in enumerate(rows[1:]) if r[0] == "1" or i < 8]  # unbalanced: swapped labels score otherwise
    names.write_text("\n".join([rows[0]] + [("positive" if r[0] == "1" else "negative") + r[1:] for r in kept]))
    stale = _copy(tiny_onnx, tmp_path / "stale")
    _edit_json(stale / "config.json", lambda c: c.update(label2id={"positive": 0, "negative": 1}))
    want = check(tiny_onnx, tiny_int8, names)
    got = check(stale, tiny_int8, names)
    assert want["original_accuracy"] != 0.5
    assert got["original_accuracy"] == want["original_accuracy"] and got["candidate_accuracy"] == want["candidate_accuracy"]


def test_a_candidate_with_another_tokenizer_is_refused_by_check_and_bench(tiny_onnx, tiny_int8, tiny_data, tmp_path):
    other = _copy(tiny_int8, tmp_path / "other-vocab")

    def swap_two_tokens(tok):
        vocab = tok["model"]["vocab"]
        vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    _edit_json(other / "tokenizer.json", swap_two_tokens)
    with pytest.raises(ModelError, match="candidate '.*other-vocab' has another tokenizer"):
        check(tiny_onnx, other, tiny_data, max_samples=8)
    with pytest.raises(ModelError, match="candidate '.*other-vocab' has another tokenizer"):
        compare({"baseline": tiny_onnx, "candidate": other}, tiny_data, PairedOptions(rounds=4, runs=1, samples=4))


@pytest.mark.parametrize("options,message", [
    (PairedOptions(rounds=4, seq_len=600), "--seq-len 600 is longer than the model takes"),
    (PairedOptions(rounds=4, seq_len=1), "--seq-len must be at least 2"),
    (PairedOptions(rounds=4, threads=0), "--threads must be at least 1"),
])
def test_interleaved_bench_checks_its_options_like_bench(tiny_onnx, tiny_int8, options, message):
    """Two-artifact bench took --seq-len 600 to an ONNX Runtime traceback, --seq-len 1 to a [CLS]-only 'speedup',
    and --threads 0 to the default."""
    with pytest.raises(InputError, match=message):
        compare({"baseline": tiny_onnx, "candidate": tiny_int8}, None, options)
