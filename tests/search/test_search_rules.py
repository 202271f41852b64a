"""The search's pure parts: durations, the seeded candidate list, the winner and the Pareto front (< 1 s)."""

import random

import pytest

from edgekit.errors import InputError
from edgekit.search import SearchOptions, candidates, parse_duration
from edgekit.search_report import contenders, pareto_front, pick_winner


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1h30m", 5400), ("45", 45), ("2.5m", 150)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "15 minutes", "-5s", "5x"])
def test_parse_duration_rejects_garbage_in_one_line(text):
    with pytest.raises(InputError) as err:
        parse_duration(text)
    assert "\n" not in err.value.message and "15m" in err.value.message


def test_candidates_are_seeded_and_start_with_the_reference_and_the_default():
    ids = lambda seed, **kw: [c.id for c in candidates(SearchOptions(seed=seed, **kw))]  # noqa: E731
    first = ids(0)
    assert first == ids(0)                       # same seed, same list
    assert first != ids(1)                       # another seed, another order...
    assert sorted(first) == sorted(ids(1))       # ...of the same space
    assert first[:2] == ["fp32", "int8-dynamic-pc"]
    # cpu: dynamic (2 per-channel x 2 fallback) + static (3 methods x 2 sample counts x 2 x 2) + fp32
    assert len(first) == len(set(first)) == 1 + 4 + 24
    trt = ids(0, target="tensorrt")
    assert trt[:2] == ["fp32", "int8-static-minmax32-pc"] and "fp16" in trt
    assert not any("dynamic" in i for i in trt)


def test_options_reject_a_dynamic_tensorrt_search():
    with pytest.raises(InputError, match="dynamic"):
        SearchOptions(target="tensorrt", modes=["dynamic"]).validate()


def _trial(tid, accuracy, p50=None, size=100, precision="int8", fell_back=0):
    return {"id": tid, "status": "ok", "accuracy": accuracy, "p50_ms": p50, "bytes": size, "precision": precision,
            "fell_back": [{"node": f"n{i}"} for i in range(fell_back)]}


def test_winner_is_fastest_within_budget_and_ignores_noise_below_the_tolerance():
    trials = {"fp32": _trial("fp32", 0.870, 10.0, 400, "fp32"),
              "a": _trial("a", 0.869, 5.0),           # within 0.3 pt
              "b": _trial("b", 0.868, 4.95),          # 1 % faster than a: noise, same band; less accurate
              "c": _trial("c", 0.850, 3.0),           # fastest, but over budget
              "d": {"id": "d", "status": "failed", "error": "x"}}
    assert pick_winner(trials, 0.003, 0.05)["id"] == "a"
    trials["b"]["p50_ms"] = 4.80                      # a is still within 5 % of b
    assert pick_winner(trials, 0.003, 0.05)["id"] == "a"
    trials["b"]["p50_ms"] = 4.0                       # b now clearly faster
    assert pick_winner(trials, 0.003, 0.05)["id"] == "b"
    assert [t["id"] for t in contenders(trials, 0.003, 0.05)] == ["b"]
    assert pick_winner(trials, 0.05, 0.05)["id"] == "c"   # a looser budget admits c


def test_winner_depends_on_the_set_not_the_order_it_finished_in():
    rng = random.Random(0)
    base = [_trial("fp32", 0.87, 10.0, 400, "fp32")] + [
        _trial(f"t{i}", round(0.86 + rng.random() * 0.01, 3), round(4 + rng.random(), 2), 90 + i) for i in range(12)]
    winners = set()
    for seed in range(20):
        shuffled = base[:]
        random.Random(seed).shuffle(shuffled)
        winners.add(pick_winner({t["id"]: t for t in shuffled}, 0.005, 0.05)["id"])
    assert len(winners) == 1


def test_equal_speed_and_accuracy_goes_to_the_smaller_file_and_no_baseline_means_no_winner():
    trials = {"fp32": _trial("fp32", 0.9, 1.00, 400, "fp32"), "pc": _trial("pc", 0.9, 1.01, 110),
              "pt": _trial("pt", 0.9, 0.99, 100)}
    assert pick_winner(trials, 0.0, 0.05)["id"] == "pt"
    assert pick_winner({"pt": trials["pt"]}, 0.0, 0.05) is None


def test_tensorrt_winner_is_the_lowest_precision_within_budget():
    trials = {"fp32": _trial("fp32", 0.87, precision="fp32"), "fp16": _trial("fp16", 0.87, precision="fp16"),
              "q-fb": _trial("q-fb", 0.869, precision="int8 (mixed)", fell_back=3),
              "q": _trial("q", 0.86, precision="int8")}
    assert pick_winner(trials, 0.003, 0.05)["id"] == "q-fb"      # q is over budget
    assert pick_winner(trials, 0.02, 0.05)["id"] == "q"          # fewer fp32 nodes first
    assert pick_winner(trials, 0.0, 0.05)["id"] == "fp16"


def test_pareto_front():
    trials = [_trial("slow-exact", 0.90, 10.0), _trial("fast-rough", 0.80, 2.0), _trial("middle", 0.88, 5.0),
              _trial("dominated", 0.85, 6.0), _trial("tie", 0.88, 5.0), _trial("nolat", 0.99)]
    assert pareto_front(trials) == ["fast-rough", "middle", "tie", "slow-exact"]


def test_optimize_flags_narrow_the_space():
    from edgekit.bench import BenchOptions
    from edgekit.options import DataOptions, GateOptions
    from edgekit.pipeline import OptimizeOptions
    from edgekit.prune import PruneOptions
    from edgekit.quantize import QuantizeOptions

    flags = OptimizeOptions(quantize=QuantizeOptions(mode="static", calibration_method="entropy"),
                            gate=GateOptions(max_accuracy_drop=0.003), prune=PruneOptions(ffn=0.5),
                            data=DataOptions(prune_data="train.tsv"), bench=BenchOptions(threads=1))
    s = SearchOptions.from_optimize(flags, {"quantize.mode", "quantize.calibration_method", "gate.max_accuracy_drop",
                                            "prune.ffn", "data.prune_data", "bench.threads"}, seed=3, time_budget=60.0)
    assert (s.modes, s.calibration_methods, s.per_channel) == (["static"], ["entropy"], [True, False])
    assert (s.prune_ffn, s.prune_layers, s.data.prune_data) == ([0, 0.5], [0], "train.tsv")
    assert s.data is flags.data and s.prune is flags.prune and s.export is flags.export  # held, not copied
    assert (s.max_accuracy_drop, s.seed, s.time_budget, s.threads) == (0.003, 3, 60.0, 1)
    ids = [c.id for c in candidates(s)]
    assert ids[:2] == ["fp32", "int8-static-entropy32-pc"] and "ffn0.5-fp32" in ids
    assert len(ids) == 2 * (1 + 2 * 2 * 2) and all("dynamic" not in i for i in ids)
    with pytest.warns(UserWarning, match="--batch-size"):
        SearchOptions.from_optimize(OptimizeOptions(bench=BenchOptions(batch_size=8)), {"bench.batch_size"})
    # the trials' own int8 and timing settings: these were dropped without a word
    with pytest.warns(UserWarning, match="--exclude-nodes, --op-types, --reduce-range/--no-reduce-range, --seq-len"):
        SearchOptions.from_optimize(OptimizeOptions(), {"quantize.nodes_to_exclude", "quantize.op_types",
                                                        "quantize.reduce_range", "bench.seq_len"})


@pytest.mark.parametrize("text,why", [
    ('{"schema": ', "Expecting value"), ("[]", "not a JSON object"),
    ('{"candidates": [], "trials": "x"}', "'trials' is not a mapping"),
    ('{"trials": {}}', "'candidates' is not a list"),
    ('{"candidates": [], "trials": {"fp32": {}}, "best": "nope"}', "'best' names 'nope'"),
])
def test_a_damaged_search_state_is_one_line(tmp_path, text, why):
    """Each was a traceback on --resume (JSONDecodeError, AttributeError, KeyError) or, for best, taken as it was."""
    from edgekit.search import _read_state

    state = tmp_path / "search_state.json"
    state.write_text(text)
    with pytest.raises(InputError, match="Cannot resume the search") as err:
        _read_state(state)
    assert why in str(err.value) and "Drop --resume" in str(err.value)


def test_a_trial_error_with_a_pipe_keeps_the_trials_table_whole():
    """A failed trial's error ("max |diff| ...") went into its row as it was and split the row into more cells."""
    import re

    from edgekit.search_report import _fallback_lines, _trial_row

    row = _trial_row({"id": "int8-dynamic", "status": "failed", "error": "max |diff| 3.2 over atol", "accuracy_drop": 0.0,
                      "fell_back": []}, None)
    assert len(re.findall(r"(?<!\\)\|", row)) == 11 and "max \\|diff\\| 3.2" in row
    lines = _fallback_lines({"winner": {"id": "w"}, "fell_back": [{"node": "a|b", "op": "MatMul", "sqnr_db": 20.1,
                                                                    "reason": "below 25 dB"}]})
    assert len(re.findall(r"(?<!\\)\|", lines[-1])) == 5
