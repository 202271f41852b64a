"""Interleaved (paired) timing: ratios per round, their spread, and ``edgekit bench A B`` on real sessions."""

import json
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.errors import InputError
from edgekit.paired import PairedOptions, interleaved, summarize


def _busy(units: float):
    """CPU work in proportion to ``units`` (not wall-clock waits: load slows both sides alike within a round)."""
    def run(_i):
        sum(range(int(units * 20000)))
    return run


def test_ratio_of_known_workloads_and_alternating_order():
    calls = []
    runs = {"slow": lambda i: (calls.append("slow"), _busy(3.0)(i)), "fast": lambda i: (calls.append("fast"),
                                                                                        _busy(1.0)(i))}
    opts = PairedOptions(rounds=6, runs=3, warmup=1)
    times = interleaved(runs, opts)
    assert [len(r) for r in times["slow"]] == [3] * 6 and [len(r) for r in times["fast"]] == [3] * 6
    # round 0 starts with slow, round 1 with fast (after 1 warm-up each)
    assert calls[2:5] == ["slow"] * 3 and calls[8:11] == ["fast"] * 3
    result = summarize(times, "slow", batch_size=1)
    r = result["ratios"]["fast"]
    assert r["ratio"] > 1.5 and r["iqr"][0] <= r["ratio"] <= r["iqr"][1]   # 3x the work: clearly slower
    assert "slow" not in result["ratios"]


def test_unstable_flag_follows_the_spread():
    steady = {"a": [[2.0]] * 8, "b": [[1.0]] * 8}
    r = summarize(steady, "a", 1)["ratios"]["b"]
    assert (r["ratio"], r["iqr"], r["spread"], r["unstable"]) == (2.0, [2.0, 2.0], 0.0, False)
    assert r["ratio_of_p50s"] == r["throughput_ratio"] == 2.0
    jumpy = {"a": [[2.0], [6.0], [2.0], [6.0], [2.0], [6.0], [2.0], [6.0]], "b": [[1.0]] * 8}
    r = summarize(jumpy, "a", 1)["ratios"]["b"]
    assert r["unstable"] and r["spread"] > 0.5


def test_options_are_checked():
    with pytest.raises(InputError, match="at least 4 rounds"):
        PairedOptions(rounds=2).validate()


def test_bench_two_artifacts_interleaved(tiny_onnx, tiny_int8, tiny_data):
    result = CliRunner().invoke(main, ["bench", str(tiny_onnx), str(tiny_int8), "--data", str(tiny_data),
                                       "--rounds", "4", "--warmup", "2", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    names = list(r["artifacts"])
    assert r["baseline"] == names[0] and list(r["ratios"]) == [names[1]]
    a, b = r["artifacts"][names[0]], r["artifacts"][names[1]]
    assert len(a["round_p50_ms"]) == len(b["round_p50_ms"]) == 4 and a["runs"] == b["runs"]
    ratio = r["ratios"][names[1]]
    assert ratio["iqr"][0] <= ratio["ratio"] <= ratio["iqr"][1]
    assert any(w.startswith("the ratios' IQRs are over only 4 rounds") for w in r["warnings"])  # was silent
    assert r["backends"][names[0]] == r["backends"][names[1]] == "onnxruntime"


def test_artifacts_of_different_tasks_are_not_compared(tiny_onnx, tmp_path):
    """A text classifier against a token classifier ran and gave a ratio of unlike things."""
    import shutil

    from edgekit.paired import compare

    other = shutil.copytree(tiny_onnx, tmp_path / "tagger")
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "task": "token-classification"}))
    with pytest.raises(InputError, match="compares artifacts of one model and task"):
        compare({"a": tiny_onnx, "b": other}, options=PairedOptions(rounds=4, runs=1, warmup=0))


@pytest.mark.parametrize("args,expected", [
    (["{a}", "{b}", "--sweep-batch", "1,4"], "--sweep-batch does not apply here: two or more artifacts"),
    (["{a}", "{b}", "--iterations", "1000"], "--iterations does not apply here"),
    (["{a}", "{b}", "--min-seconds", "10"], "--min-seconds does not apply here"),
    (["{a}", "--rounds", "6"], "--rounds does not apply here: it sets the interleaved rounds"),
    (["{a}", "--text-column", "text"], "--text-column does not apply here: it names a column of --data"),
])
def test_bench_refuses_options_it_would_ignore(tiny_onnx, tiny_int8, args, expected):
    """Each ran with exit 0 and the option silently ignored (20 runs taken for --iterations 1000, say)."""
    paths = {"a": str(tiny_onnx), "b": str(tiny_int8)}
    result = CliRunner().invoke(main, ["bench", *(a.format(**paths) for a in args)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and expected in lines[0], result.output
