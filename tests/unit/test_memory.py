"""The memory check on batches (edgekit.memory): refused past the machine's memory, warned near it, silent below."""

import pytest

from edgekit import memory
from edgekit.errors import InputError

MINILM = {"hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 12}


def test_the_bound_grows_with_rows_and_faster_than_length_in_attention():
    one = memory.activation_bytes(MINILM, 1, 64)
    assert memory.activation_bytes(MINILM, 10, 64) == 10 * one
    long = {**MINILM, "intermediate_size": 1}  # attention dominates: its scores grow with the square of the length
    assert memory.activation_bytes(long, 1, 1024) > 8 * memory.activation_bytes(long, 1, 256)
    assert memory.activation_bytes({"dim": 768, "hidden_dim": 3072, "n_heads": 12}, 1, 8) > 0  # DistilBERT's keys
    assert memory.activation_bytes({"vocab_size": 10}, 1000, 8) is None  # no hidden size: unknown, nothing refused


@pytest.mark.parametrize("free_rows,outcome", [(0.5, "refused"), (2, "warned"), (100, "silent")])
def test_refused_warned_or_silent_by_the_memory_available(monkeypatch, tmp_path, capsys, free_rows, outcome):
    (tmp_path / "config.json").write_text('{"hidden_size": 384, "intermediate_size": 1536, "num_attention_heads": 12}')
    batch, seq = 1000, 64
    needed = memory.activation_bytes(MINILM, batch, seq)
    monkeypatch.setattr(memory, "available_bytes", lambda: int(needed * free_rows))
    monkeypatch.setattr(memory, "_warned", set())
    if outcome == "refused":
        with pytest.raises(InputError) as err:
            memory.check_batch_fits(tmp_path, batch, seq, "--batch-size")
        fits = int(str(err.value).split("under ")[1].split()[0])  # the batch the fix names passes the bound
        assert memory.activation_bytes(MINILM, fits, seq) <= needed * free_rows
        assert memory.activation_bytes(MINILM, fits + 1, seq) > needed * free_rows
        return
    memory.check_batch_fits(tmp_path, batch, seq, "--batch-size")
    memory.check_batch_fits(tmp_path, batch, seq, "--batch-size")  # said once a run
    warned = capsys.readouterr().err
    assert warned.count("WARNING: --batch-size 1000 at 64 tokens may need") == (outcome == "warned")


def test_evaluate_refuses_a_batch_past_memory_before_running(tiny_onnx, monkeypatch):
    from edgekit.check import evaluate
    from edgekit.runtime.session import OrtSession
    from edgekit.runtime.tokenizer import TextEncoder

    monkeypatch.setattr(memory, "available_bytes", lambda: 1024)
    session = OrtSession(tiny_onnx / "model.onnx", threads=1)
    with pytest.raises(InputError, match="the run would be killed for lack of memory"):
        evaluate(session, TextEncoder(tiny_onnx), ["a good film"] * 4, batch_size=4)
    assert session._sess is None  # refused before the model was opened
