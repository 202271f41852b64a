"""The spine end to end on the real fine-tuned MiniLM and SST-2 dev (skipped without ../shared)."""

import subprocess
import sys

import pytest

from conftest import read_json, requires_shared, requires_toolchain

pytestmark = [requires_shared, requires_toolchain, pytest.mark.shared]


@pytest.fixture(scope="module")
def optimized(ref_model, sst2_dev, tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "minilm-int8"
    result = subprocess.run([sys.executable, "-m", "edgekit", "optimize", str(ref_model), "--data", str(sst2_dev),
                             "--out", str(out), "--iterations", "50", "--warmup", "5"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return out


FILES = ("model.onnx", "tokenizer.json", "config.json", "report.json", "report.md", "manifest.json")


def test_report_has_gate_numbers(optimized):
    report = read_json(optimized / "report.json")
    base, opt = report["baseline"], report["optimized"]
    assert opt["backend"] == "onnxruntime" and opt["path"].endswith("model.onnx")
    assert abs(base["accuracy"] - 0.8716) < 0.002  # the model README's fp32 figure
    assert report["check"]["samples"] == 872
    # the gate: the drop is the difference of the two accuracies, within the 1-point budget, and it passed
    assert report["accuracy_drop"] == pytest.approx(base["accuracy"] - opt["accuracy"], abs=1e-9)
    assert report["max_accuracy_drop"] == 0.01 and report["accuracy_drop"] <= 0.01 + 1e-12 and report["passed"] is True
    assert 0.86 <= opt["accuracy"] <= 0.89
    # latency: measured, positive, ordered percentiles; the speedup is their ratio and int8 is faster
    for row in (base, opt):
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"], lat
        assert lat["mean"] > 0 and row["throughput_per_s"] > 0
    # the separate benches' ratio is kept; the reported speedup is the interleaved rounds' median ratio
    assert report["speedup_p50_separate"] == pytest.approx(base["latency_ms"]["p50"] / opt["latency_ms"]["p50"],
                                                           rel=1e-6)
    s = report["speedup"]
    assert s["method"] == "interleaved" and report["speedup_p50"] == s["ratio"] and s["rounds"] >= 4
    assert s["iqr"][0] <= s["ratio"] <= s["iqr"][1]
    assert s["ratio"] == pytest.approx(s["p50_ms"]["original"] / s["p50_ms"]["optimized"], rel=0.5)
    assert report["speedup_p50"] > 1
    manifest = read_json(optimized / "manifest.json")
    assert manifest["passed"] is True and manifest["inputs"]["model_sha256"]
    for name in FILES:
        assert (optimized / name).is_file() and (optimized / name).stat().st_size > 0, name
    md = (optimized / "report.md").read_text()
    assert md.startswith("# edgekit optimize report: PASSED") and "None" not in md
    assert f"{report['speedup_p50']:.2f}x" in md


def test_artifact_is_smaller_and_int8(optimized):
    import onnx

    report = read_json(optimized / "report.json")
    assert report["optimized"]["size_mb"] < report["baseline"]["size_mb"] / 3
    kinds = {n.op_type for n in onnx.load(str(optimized / "model.onnx")).graph.node}
    assert "MatMulInteger" in kinds


def test_runtime_predictions_equal_check(optimized, ref_model, sst2_dev):
    from edgekit.check import check
    from edgekit.data import load_dataset
    from edgekit.runtime import load

    checked = check(optimized, optimized, sst2_dev, batch_size=1)  # check's own evaluation of the artifact
    clf = load(optimized)
    texts = load_dataset(sst2_dev).texts
    labels = [p["label"] for p in clf.predict(texts)]
    id2label = {0: "negative", 1: "positive"}
    assert labels == [id2label[i] for i in checked["candidate_predictions"]]
    assert checked["candidate_accuracy"] == pytest.approx(read_json(optimized / "report.json")["optimized"]["accuracy"])
