"""Ctrl-C and SIGTERM stop a TensorRT-RTX engine build (no GPU needed to build).

A signal that landed while TensorRT built ran the CLI's handler inside TensorRT's logger callback: the bindings
printed "Exception caught in log(): KeyboardInterrupt" with a stack, the build went on, and the command wrote
a whole engine and exited 0. A failed or stopped build also left the --out folders it had made, empty.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("tensorrt_rtx", reason="the rtx extra (tensorrt-rtx) is not installed")

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_engine_build_stops_it_and_keeps_nothing(tiny_onnx, tmp_path, sig):
    out = tmp_path / "new" / "engine"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "build", str(tiny_onnx), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, EXIT))
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip())
            if line.startswith("[edgekit] engine:"):  # the build is under way
                proc.send_signal(sig)
                break
        lines += [line.rstrip() for line in proc.stderr]
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "\n".join(lines)
    assert rc == EXIT[sig], log
    assert "Exception caught" not in log and "Traceback" not in log and lines[-1].startswith("Error: "), log
    assert not (tmp_path / "new").exists(), log  # nor the folders made for --out


def test_a_failed_build_removes_the_folders_it_made_and_a_folder_at_the_engine_path_is_refused(tiny_onnx, tmp_path):
    def build(*args):
        return subprocess.run([sys.executable, "-m", "edgekit", "build", str(tiny_onnx), *args], capture_output=True,
                              text=True, timeout=300)
    failed = build("--out", str(tmp_path / "a" / "b"), "--compute-capability", "7.5", "--precision", "fp32")
    assert failed.returncode == 1 and failed.stderr.strip().splitlines()[-1].startswith("Error: "), failed.stderr
    assert not (tmp_path / "a").exists()  # Turing has no fp32 GEMM in TensorRT-RTX: the build fails
    (tmp_path / "c" / "model.engine").mkdir(parents=True)
    refused = build("--out", str(tmp_path / "c"), "--force")  # was an IsADirectoryError traceback after the build,
    lines = refused.stderr.strip().splitlines()                # with model.fp16.onnx already moved in
    assert refused.returncode == 1 and lines[-1].startswith("Error: ") and "is a folder" in lines[-1], refused.stderr
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["model.engine"]


def test_force_over_an_engine_of_another_model_brings_the_new_models_labels(tiny_onnx, tmp_path):
    """--force rebuilt an earlier build's folder from another model but kept the old config.json: the runtime
    would have labelled the new engine with the old model's classes."""
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_onnx, other)
    config = json.loads((other / "config.json").read_text())
    config.update(id2label={"0": "BAD", "1": "GOOD"}, label2id={"BAD": 0, "GOOD": 1})
    (other / "config.json").write_text(json.dumps(config))
    out = tmp_path / "engine"

    def build(src, *extra):
        return subprocess.run([sys.executable, "-m", "edgekit", "build", str(src), "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=300)
    assert build(tiny_onnx).returncode == 0
    refused = build(other, "--out", str(out / "second.engine"))  # another engine name, same folder, no --force
    assert refused.returncode == 1 and "holds another model's config.json" in refused.stderr, refused.stderr
    assert build(other, "--force").returncode == 0
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "BAD", "1": "GOOD"}


def test_the_progress_monitor_cancels_a_real_build(tiny_onnx):
    """The signal test above ends 130/143 whether the build was cancelled or ran to its end (the signal is
    delivered after it either way): here TensorRT-RTX itself must stop when the monitor says so."""
    import tensorrt_rtx as trt

    from edgekit.inspect_network import _canceller, parse

    for came, built in (([], True), ([signal.SIGINT], False)):
        builder, network, parser, logger = parse(trt, tiny_onnx / "model.onnx", "TensorRT-RTX")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            profile.set_shape(network.get_input(i).name, (1, 1), (1, 8), (1, 16))
        config.add_optimization_profile(profile)
        config.progress_monitor = _canceller(trt, came)
        plan = builder.build_serialized_network(network, config)
        assert (plan is not None) is built, (came, logger.errors)
