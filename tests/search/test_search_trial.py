"""A Ray trial's body run in this process (no Ray needed): it leaves nothing in the node's $TMPDIR (a few s)."""

import tempfile

from edgekit.data import load_dataset
from edgekit.search_trial import Candidate, TrialSetup, pack, ray_trial


def test_a_ray_trial_sweeps_a_killed_workers_scratch_and_leaves_none_of_its_own(tiny_onnx, tiny_data, tmp_path,
                                                                               monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    stale = scratch / f".edgekit-trial.tmp-{2**22 + 12345}-abc"  # a SIGKILLed worker's (no process has that pid)
    (stale / "source").mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rows = load_dataset(tiny_data)
    setup = TrialSetup(source=str(tiny_onnx), gate=rows, calibration=rows, validation=rows, latency_iterations=5,
                       latency_seconds=0.05)
    record = ray_trial(Candidate(precision="int8", mode="dynamic", per_channel=True), setup, pack(setup))
    assert record["status"] == "ok", record
    assert record["files"] and "model.onnx" in record["files"] and 0 <= record["accuracy"] <= 1
    assert list(scratch.iterdir()) == []
