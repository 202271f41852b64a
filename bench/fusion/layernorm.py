"""SkipLayerNormalization against Sum + LayerNormalization on ONNX Runtime's CPU provider.

Why quantize (cpu) writes the fused SkipLayerNormalization back as two ops
(edgekit/fusion.py: split_skip_layernorm). Twelve of each in a chain, at the
reference model's hidden size, timed in interleaved rounds in one process;
``Add + LayerNormalization`` is there to show ONNX Runtime's optimizer fusing
it back into the slow op. Run from the repository root:

    python bench/fusion/layernorm.py            # prints a Markdown table
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import edgekit  # noqa: F401  (before onnxruntime: it turns ORT's telemetry off, which writes $TMPDIR/.ses)
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

KINDS = {"SkipLayerNormalization": "sln", "Sum + LayerNormalization": "sum", "Add + LayerNormalization": "add"}
CHAIN = 12


def chain(kind: str, shape: tuple[int, int, int]) -> bytes:
    hidden = shape[-1]
    inits = [numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "beta"),
             numpy_helper.from_array(np.full(hidden, 0.01, np.float32), "bias")]
    nodes, x = [], "x"
    for i in range(CHAIN):
        if kind == "sln":
            nodes.append(helper.make_node("SkipLayerNormalization", [x, "skip", "gamma", "beta", "bias"], [f"y{i}"],
                                          domain="com.microsoft", epsilon=1e-12))
        else:
            op, addends = ("Sum", [x, "skip", "bias"]) if kind == "sum" else ("Add", [x, "skip"])
            nodes.append(helper.make_node(op, addends, [f"s{i}"]))
            nodes.append(helper.make_node("LayerNormalization", [f"s{i}", "gamma", "beta"], [f"y{i}"], axis=-1,
                                          epsilon=1e-12))
        x = f"y{i}"
    if kind == "add":
        inits.pop()  # the bias is unused there
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape))
                                            for n in ("x", "skip")],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, list(shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model.SerializeToString()


def measure(shape, threads: int, rounds: int, runs: int) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    sessions = {name: ort.InferenceSession(chain(kind, shape), options, providers=["CPUExecutionProvider"])
                for name, kind in KINDS.items()}
    feed = {n: np.random.default_rng(0).standard_normal(shape).astype(np.float32) for n in ("x", "skip")}
    per_round = {name: [] for name in sessions}
    for r in range(rounds):
        order = list(sessions.items()) if r % 2 == 0 else list(sessions.items())[::-1]
        for name, session in order:
            session.run(None, feed)
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - t)
            per_round[name].append(np.median(times) / CHAIN * 1e6)
    return {name: float(np.median(v)) for name, v in per_round.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1x26x384,1x128x384,8x128x384",
                   help="batch x sequence x hidden, comma-separated")
    p.add_argument("--threads", default=f"1,{len(os.sched_getaffinity(0))}")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    print(f"onnxruntime {ort.__version__}; {os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} interleaved rounds x {args.runs} runs; microseconds per op (median of round medians)\n")
    print("| shape | threads | " + " | ".join(KINDS) + " | fused / Sum+LN |")
    print("|---|---|" + "---|" * (len(KINDS) + 1))
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        for threads in dict.fromkeys(int(t) for t in args.threads.split(",")):
            us = measure(shape, threads, args.rounds, args.runs)
            ratio = us["SkipLayerNormalization"] / us["Sum + LayerNormalization"]
            print(f"| {text} | {threads} | " + " | ".join(f"{v:.1f}" for v in us.values()) + f" | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
