"""CPU-aware int8: variants measured on this machine, the choice and its reason in the manifest."""

import onnx

from edgekit.cpu_int8 import decide
from edgekit.quantize import QuantizeOptions, quantize


def _timing(ratios: dict[str, tuple[float, float, float]]) -> dict:
    return {"ratios": {n: {"ratio": r, "iqr": [lo, hi], "unstable": False} for n, (r, lo, hi) in ratios.items()},
            "artifacts": {n: {"p50_ms": 1.0} for n in ["dynamic", *ratios]}, "load_average_before": 0.5,
            "options": {"rounds": 6, "runs": 3}}


def test_faster_variant_wins_only_at_equal_fidelity():
    fid = {"dynamic": {"mean_abs_logit_diff": 0.02, "argmax_agreement": 1.0},
           "dynamic-reduce-range": {"mean_abs_logit_diff": 0.025, "argmax_agreement": 1.0},
           "static-qoperator-u8s8": {"mean_abs_logit_diff": 0.2, "argmax_agreement": 0.9}}
    d = decide("dynamic", fid, _timing({"dynamic-reduce-range": (1.3, 1.2, 1.4), "static-qoperator-u8s8": (2.0, 1.9, 2.1)}))
    assert d["chosen"] == "dynamic-reduce-range" and "1.30x" in d["reason"]
    assert not d["candidates"]["static-qoperator-u8s8"]["matches_fp32"]   # faster, but further from fp32
    d = decide("dynamic", fid, _timing({"dynamic-reduce-range": (1.03, 0.95, 1.1), "static-qoperator-u8s8": (2.0, 1.9, 2.1)}))
    assert d["chosen"] == "dynamic" and "no variant" in d["reason"]


def test_manifest_records_the_measured_choice(tiny_onnx, tiny_data, tmp_path):
    art = quantize(tiny_onnx, tmp_path / "q", QuantizeOptions(target="cpu", calibration_samples=16, choose=True),
                   calibration_data=tiny_data)
    choice = art.manifest["steps"]["int8_choice"]
    assert set(choice["candidates"]) == {"dynamic", "dynamic-reduce-range", "dynamic-per-tensor",
                                         "static-qoperator-u8s8"}
    assert choice["chosen"] in choice["candidates"] and choice["reason"]
    assert set(choice["cpu"]) >= {"vnni", "amx_int8"}
    for c in choice["candidates"].values():
        assert 0.0 <= c["argmax_agreement"] <= 1.0 and c["p50_ms"] > 0
    kinds = {n.op_type for n in onnx.load(str(art.model_file)).graph.node}
    static = choice["chosen"].startswith("static")
    assert art.manifest["mode"] == ("static" if static else "dynamic")
    assert ("QLinearMatMul" in kinds) == static and ("MatMulInteger" in kinds) != static


def test_explicit_mode_is_not_second_guessed(tiny_onnx, tmp_path):
    art = quantize(tiny_onnx, tmp_path / "q", QuantizeOptions(target="cpu", mode="dynamic"))
    assert "int8_choice" not in art.manifest["steps"] and art.manifest["mode"] == "dynamic"


def test_no_choice_by_default(tiny_onnx, tmp_path):
    """Off by default: a choice by timing would make the artifact depend on the machine's load."""
    art = quantize(tiny_onnx, tmp_path / "q", QuantizeOptions(target="cpu"))
    assert "int8_choice" not in art.manifest["steps"] and art.manifest["mode"] == "dynamic"
