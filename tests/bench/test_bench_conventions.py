"""Measurement conventions of edgekit.bench on real ONNX Runtime / PyTorch sessions (tiny models; ~20 s)."""

import math

import numpy as np
import pytest
from conftest import cpuinfo_flags

from edgekit.bench import (HIGH_CV, BenchOptions, _point_warnings, bench, format_bench, measure, noisy_warning,
                           summarize, sweep, texts_of_length)
from edgekit.errors import InputError
from edgekit.sessions import encoder_for, session_for

QUICK = dict(warmup=2, warmup_seconds=0.0, iterations=12, min_seconds=0.0)


def test_known_spread_is_flagged_noisy():
    times = [10.0] * 50 + [20.0] * 50  # mean 15, stdev 5 * sqrt(100/99)
    s = summarize(times, batch_size=4)
    assert s["latency_ms"]["mean"] == pytest.approx(15.0)
    assert s["latency_ms"]["stdev"] == pytest.approx(5.0 * math.sqrt(100 / 99))
    assert s["cv"] == pytest.approx(s["latency_ms"]["stdev"] / 15.0) and s["cv"] > HIGH_CV
    assert s["noisy"] is True and s["cv_threshold"] == HIGH_CV
    assert s["latency_ms"]["p50"] == pytest.approx(15.0) and s["latency_ms"]["p90"] == 20.0
    assert s["throughput_per_s"] == pytest.approx(1000.0 * 4 / 15.0)
    assert "CV 34% is above 10%" in noisy_warning(s)
    assert summarize(times, 1, cv_threshold=0.5)["noisy"] is False  # the threshold is what decides


def test_steady_run_is_not_flagged():
    times = list(10.0 + 0.05 * np.sin(np.arange(200)))
    s = summarize(times, batch_size=1)
    assert s["cv"] < 0.01 and s["noisy"] is False and noisy_warning(s) is None
    lat = s["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_noisy_result_is_flagged_in_the_text_output(tiny_int8):
    result = bench(tiny_int8, options=BenchOptions(**QUICK))
    result.update(summarize([10.0] * 50 + [20.0] * 50, 1))  # a real result carrying a known-noisy sample
    result["warnings"] = _point_warnings(result)
    text = format_bench(result)
    assert "WARNING: noisy run: CV 34% is above 10%" in text


def test_both_minimums_are_met(tiny_onnx):
    with session_for(tiny_onnx, threads=1) as session:
        feeds = [session.feeds(encoder_for(tiny_onnx)(["a good film", "the plot was dull"]))]

        def run(f):
            session.run(f)

        by_time = measure(run, feeds, BenchOptions(warmup=2, warmup_seconds=0.15, iterations=5, min_seconds=0.3))
        by_count = measure(run, feeds, BenchOptions(warmup=3, warmup_seconds=0.0, iterations=40, min_seconds=0.0))
    assert by_time["seconds"] >= 0.3 and by_time["iterations"] > 5
    assert by_time["warmup_seconds"] >= 0.15 and by_time["warmup_runs"] >= 2
    assert by_count["iterations"] == 40 == len(by_count["samples_ms"]) and by_count["warmup_runs"] == 3
    assert by_count["gpu_compute_ms"] is None and by_count["timer"] == "perf_counter"


def test_result_schema_and_environment(tiny_int8):
    r = bench(tiny_int8, options=BenchOptions(threads=1, batch_size=2, **QUICK))
    assert r["schema"] == "edgekit.bench/1" and r["kind"] == "bench" and r["mode"] == "model-only"
    assert r["backend"] == "onnxruntime" and r["threads"] == 1 and r["batch_size"] == 2
    assert len(r["samples_ms"]) == r["iterations"] == 12
    assert r["latency_ms"]["mean"] == pytest.approx(np.mean(r["samples_ms"]), rel=1e-3)
    assert r["throughput_per_s"] == pytest.approx(2000.0 / r["latency_ms"]["mean"])
    assert any(w.startswith("only 12 timed runs") for w in r["warnings"])
    env = r["environment"]
    assert env["threads"]["intra_op"] == 1 and env["versions"]["onnxruntime"]
    assert env["cpu"]["usable_cores"] >= 1
    assert env["cpu"]["flags"]["avx512_vnni"] is ("avx512_vnni" in cpuinfo_flags())  # this CPU's truth
    assert r["options"]["min_seconds"] == 0.0 and r["options"]["warmup_seconds"] == 0.0


def test_intra_op_threads_reach_pytorch(tiny_model):
    r = bench(tiny_model, options=BenchOptions(threads=1, **QUICK))
    assert r["backend"] == "pytorch" and r["environment"]["threads"]["torch"] == 1


def test_seq_len_means_real_tokens(tiny_onnx, tiny_data):
    from edgekit.data import load_dataset

    encoder = encoder_for(tiny_onnx)
    texts = load_dataset(tiny_data).texts[:10]
    cut = texts_of_length(encoder, texts, 24)
    lengths = encoder.token_lengths(cut)
    assert len(cut) == 10 and all(20 <= n <= 24 for n in lengths), lengths
    r = bench(tiny_onnx, tiny_data, BenchOptions(seq_len=24, batch_size=2, **QUICK))
    assert r["tokens_mean"] == 24 and r["seq_len"] == 24


def test_end_to_end_goes_through_the_shipped_runtime(tiny_int8, tiny_model):
    r = bench(tiny_int8, options=BenchOptions(end_to_end=True, batch_size=3, **QUICK))
    assert r["mode"] == "end-to-end" and r["backend"] == "onnxruntime" and r["iterations"] == 12
    with pytest.raises(InputError, match="shipped runtime"):
        bench(tiny_model, options=BenchOptions(end_to_end=True, **QUICK))


def test_sweep_covers_the_grid(tiny_onnx, tiny_data):
    r = sweep(tiny_onnx, tiny_data, batch_sizes=[1, 2], seq_lens=[None, 16],
              options=BenchOptions(warmup=1, warmup_seconds=0.0, iterations=3, min_seconds=0.0))
    assert r["kind"] == "sweep" and r["schema"] == "edgekit.bench/1"
    assert [(p["batch_size"], p["seq_len"]) for p in r["points"]] == [(1, None), (1, 16), (2, None), (2, 16)]
    assert all(p["tokens_mean"] == 16 for p in r["points"] if p["seq_len"] == 16)
    assert any("batch 2 seq 16: only 3 timed runs" in w for w in r["warnings"])


@pytest.mark.parametrize("bad", [dict(iterations=0), dict(seq_len=1), dict(threads=0), dict(min_seconds=-1),
                                 dict(seq_len=4096)])
def test_bad_options_are_one_line_errors(tiny_onnx, bad):
    with pytest.raises(InputError) as info:
        bench(tiny_onnx, options=BenchOptions(**{**QUICK, **bad}))
    assert "\n" not in info.value.message


@pytest.mark.gpu
def test_engine_reports_gpu_compute_time(tiny_onnx, tmp_path):
    """On a GPU: CUDA-event compute time beside end-to-end (copies included) time."""
    from edgekit.runtime.trt import EngineSession, cuda_devices

    if not cuda_devices()[0]:
        pytest.skip("no CUDA GPU on this machine")
    if not callable(getattr(EngineSession, "run_timed", None)):
        pytest.skip("EngineSession has no run_timed(feeds) -> (outputs, gpu_ms) yet: only end-to-end is timed")
    from edgekit.engine import BuildOptions, build

    engine = build(tiny_onnx, tmp_path / "engine", BuildOptions(precision="fp16")).path
    r = bench(engine, options=BenchOptions(**QUICK))
    assert r["timer"] == "perf_counter + cuda events"
    assert 0 < r["gpu_compute_ms"]["p50"] <= r["latency_ms"]["p50"]

