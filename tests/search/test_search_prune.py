"""Pruning ratios in the search space, on the tiny model (edgekit.prune without recovery; ~30 s)."""

from conftest import requires_toolchain
from edgekit.options import DataOptions
from edgekit.prune import PruneOptions
from edgekit.search import SearchOptions, search

pytestmark = requires_toolchain


def _options(prune_data: str | None = None) -> SearchOptions:
    return SearchOptions(modes=["dynamic"], per_channel=[True], fallback_budgets=[None], prune_ffn=[0.0, 0.5],
                         prune=PruneOptions(importance="magnitude", recover_epochs=0),
                         data=DataOptions(prune_data=prune_data), threads=1, latency_iterations=20,
                         latency_seconds=0.2)


def test_pruned_candidates_start_from_a_smaller_export(tiny_model, tiny_data, tmp_path):
    train = tmp_path / "train.tsv"  # pruning must not learn from the gate data: another file
    train.write_text(tiny_data.read_text())
    log = []
    report = search(tiny_model, tiny_data, tmp_path / "out", _options(prune_data=str(train)), log=log.append)
    by_id = {t["id"]: t for t in report["search"]["trials"]}
    assert set(by_id) == {"fp32", "int8-dynamic-pc", "ffn0.5-fp32", "ffn0.5-int8-dynamic-pc"}
    assert all(t["status"] == "ok" for t in by_id.values()), by_id
    assert by_id["ffn0.5-fp32"]["bytes"] < by_id["fp32"]["bytes"]
    assert by_id["ffn0.5-int8-dynamic-pc"]["bytes"] < by_id["int8-dynamic-pc"]["bytes"]
    assert sum(line.startswith("pruning ffn0.5: started") for line in log) == 1  # made once, used twice


def test_pruning_without_training_data_fails_only_its_candidates(tiny_model, tiny_data, tmp_path):
    report = search(tiny_model, tiny_data, tmp_path / "out", _options())
    by_id = {t["id"]: t for t in report["search"]["trials"]}
    for tid in ("ffn0.5-fp32", "ffn0.5-int8-dynamic-pc"):
        assert by_id[tid]["status"] == "failed" and by_id[tid]["error"].startswith("Pruning needs training data")
    assert by_id["int8-dynamic-pc"]["status"] == "ok" and report["search"]["winner"]["id"] in ("fp32", "int8-dynamic-pc")
    assert "Pruning needs training data" in (tmp_path / "out" / "report.md").read_text()


def test_pruning_needs_the_hf_model(tiny_onnx, tiny_data, tmp_path):
    report = search(tiny_onnx, tiny_data, tmp_path / "out", _options(prune_data=str(tiny_data) + ".other"))
    failed = [t for t in report["search"]["trials"] if t["status"] == "failed"]
    assert len(failed) == 2 and all("given an ONNX model" in t["error"] for t in failed)
