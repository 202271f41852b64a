"""The CPU int8 artifact's per-layer ops against the alternatives ONNX Runtime offers, timed side by side.

Why ``quantize --target cpu`` keeps what it writes in each encoder layer (DynamicQuantizeLinear + QAttention,
BiasGelu, DynamicQuantizeMatMul with per-channel int8 weights) and where the batch-1 time goes. Three groups,
each a chain of the reference model's layer shapes (MiniLM-L6: hidden 384, 12 heads, FFN 1536), every variant
timed in interleaved rounds in one process on the same input:

- attention: five layers of QKV projection + attention with a padding mask (shared by the layers) --
  QAttention (the default), DynamicQuantizeMatMul + Split + MultiHeadAttention, DynamicQuantizeMatMul +
  Split + the ONNX ``Attention`` op (opset 23), and three DynamicQuantizeMatMul (Q, K, V apart: no Split) +
  MultiHeadAttention; the QKV projection alone (DynamicQuantizeMatMul + Split, no attention) bounds what any
  of them could reach (MultiHeadAttention's packed-QKV form, which would need no Split, is not implemented on CPU);
- activation: six bias + GELU over the FFN width -- BiasGelu (the default, exact erf) and FastGelu (tanh
  approximation; ONNX Runtime's optimizer turns Add + ``Gelu`` (opset 20) into these two, so they are the choice);
- projection: three FFN pairs (384 -> 1536 -> 384) -- DynamicQuantizeMatMul (the default) and MatMulNBits with
  8-bit blocks of 32 and 128 (accuracy_level 4: int8 activations).

``rel. diff`` is max |variant - reference| / max |reference| over the output (padded rows left out): the
reference is the default's output for attention (same int8 weights), the fp32 MatMul chain for projection, and
exact-erf GELU in float64 for activation. Run from the repository root:

    python bench/fusion/alternatives.py            # prints Markdown tables
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

import numpy as np
from edgekit.paired import PairedOptions, interleaved  # before onnxruntime: edgekit turns ORT's telemetry off
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


HIDDEN, HEADS, FFN = 384, 12, 1536
LAYERS, ACTIVATIONS, PAIRS = 5, 6, 3
MS = "com.microsoft"
BOUND = "QKV projection alone, no attention (a bound, not an alternative)"


def _model(nodes, inputs, output, inits, opset: int) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    model.ir_version = 10
    return model.SerializeToString()


def _int8(rng, k: int, n: int, prefix: str) -> tuple[np.ndarray, list]:
    """fp32 weights and their per-column symmetric int8 initializers (as quantize --target cpu writes them)."""
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    return w, [numpy_helper.from_array(np.round(w / scale).astype(np.int8), f"{prefix}W"),
               numpy_helper.from_array(scale, f"{prefix}s"), numpy_helper.from_array(np.zeros(n, np.int8), f"{prefix}z")]


def attention_variants(rng) -> dict[str, tuple[bytes, int]]:
    x = helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["B", "S", HIDDEN])
    m = helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "S"])
    inits, layers = [numpy_helper.from_array(np.array([HIDDEN] * 3, np.int64), "sizes"),
                     numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                     numpy_helper.from_array(np.array([1], np.int64), "one")], []
    apart = []  # Q, K and V weights one by one: only the 3 x DynamicQuantizeMatMul variant carries them
    for i in range(LAYERS):
        _, qkv = _int8(rng, HIDDEN, 3 * HIDDEN, f"l{i}")
        bias = (rng.standard_normal(3 * HIDDEN) * 0.1).astype(np.float32)
        inits += qkv + [numpy_helper.from_array(bias, f"l{i}b")]
        packed = [numpy_helper.to_array(t) for t in qkv]
        for j, part in enumerate("QKV"):  # the same int8 weights, one projection each (for 3 x DynamicQuantizeMatMul)
            cols = slice(j * HIDDEN, (j + 1) * HIDDEN)
            apart += [numpy_helper.from_array(np.ascontiguousarray(w[..., cols]), f"l{i}{part}{kind}")
                      for w, kind in zip(packed, "Wsz")] + [numpy_helper.from_array(bias[cols], f"l{i}{part}b")]
        layers.append(f"l{i}")

    def build(kind: str) -> tuple[bytes, int]:
        nodes = [helper.make_node("Cast", ["mask"], ["mask32"], to=TensorProto.INT32)]
        if kind == "onnx":  # a boolean (B, 1, S, S) mask, built once for every layer
            nodes += [helper.make_node("Cast", ["mask"], ["mb"], to=TensorProto.BOOL),
                      helper.make_node("Unsqueeze", ["mb", "axes"], ["m3"]),
                      helper.make_node("Shape", ["mask"], ["b"], start=0, end=1),
                      helper.make_node("Shape", ["mask"], ["s"], start=1, end=2),
                      helper.make_node("Concat", ["b", "one", "s", "s"], ["m4shape"], axis=0),
                      helper.make_node("Expand", ["m3", "m4shape"], ["m4"])]
        for i, p in enumerate(layers):
            x_in, x_out = f"x{i}", f"x{i + 1}"
            if kind == "qattention":
                nodes += [helper.make_node("DynamicQuantizeLinear", [x_in], [f"{p}q", f"{p}qs", f"{p}qz"]),
                          helper.make_node("QAttention", [f"{p}q", f"{p}W", f"{p}b", f"{p}qs", f"{p}s", "mask32",
                                                          f"{p}qz", f"{p}z"], [x_out], domain=MS, num_heads=HEADS)]
                continue
            if kind == "mha3":
                nodes += [helper.make_node("DynamicQuantizeMatMul", [x_in] + [f"{p}{part}{k}" for k in "Wszb"],
                                           [f"{p}{part}"], domain=MS) for part in "QKV"]
                nodes.append(helper.make_node("MultiHeadAttention", [f"{p}Q", f"{p}K", f"{p}V", "", "mask32"],
                                              [x_out], domain=MS, num_heads=HEADS))
                continue
            nodes += [helper.make_node("DynamicQuantizeMatMul", [x_in, f"{p}W", f"{p}s", f"{p}z", f"{p}b"],
                                       [f"{p}qkv"], domain=MS),
                      helper.make_node("Split", [f"{p}qkv", "sizes"], [f"{p}Q", f"{p}K", f"{p}V"], axis=2)]
            if kind == "projection":  # Q feeds the next layer: the QKV GEMM's cost with no attention after it
                nodes.append(helper.make_node("Identity", [f"{p}Q"], [x_out]))
            elif kind == "mha":
                nodes.append(helper.make_node("MultiHeadAttention", [f"{p}Q", f"{p}K", f"{p}V", "", "mask32"],
                                              [x_out], domain=MS, num_heads=HEADS))
            else:
                nodes.append(helper.make_node("Attention", [f"{p}Q", f"{p}K", f"{p}V", "m4"], [x_out],
                                              q_num_heads=HEADS, kv_num_heads=HEADS))
        return _model(nodes, [x, m], f"x{LAYERS}", inits + (apart if kind == "mha3" else []),
                      23 if kind == "onnx" else 18), LAYERS

    return {"DynamicQuantizeLinear + QAttention (default)": build("qattention"),
            "DynamicQuantizeMatMul + Split + MultiHeadAttention": build("mha"),
            "DynamicQuantizeMatMul + Split + Attention (opset 23)": build("onnx"),
            "3 x DynamicQuantizeMatMul + MultiHeadAttention": build("mha3"),
            BOUND: build("projection")}


def activation_variants(rng) -> dict[str, tuple[bytes, int]]:
    x = helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["B", "S", FFN])
    bias = [numpy_helper.from_array(_activation_bias(), "bias")]

    def build(op: str) -> tuple[bytes, int]:
        nodes = [helper.make_node(op, [f"x{i}", "bias"], [f"x{i + 1}"], domain=MS) for i in range(ACTIVATIONS)]
        return _model(nodes, [x], f"x{ACTIVATIONS}", bias, 18), ACTIVATIONS

    return {"BiasGelu (default)": build("BiasGelu"), "FastGelu": build("FastGelu")}


def projection_variants(rng) -> dict[str, tuple[bytes, int]]:
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    x = helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["B", "S", HIDDEN])
    shapes = [(HIDDEN, FFN), (FFN, HIDDEN)] * PAIRS
    weights, int8_inits, int8_nodes, fp32_nodes = [], [], [], []
    for i, (k, n) in enumerate(shapes):
        w, inits = _int8(rng, k, n, f"p{i}")
        weights.append(numpy_helper.from_array(w, f"p{i}w"))
        int8_inits += inits
        int8_nodes.append(helper.make_node("DynamicQuantizeMatMul", [f"x{i}", f"p{i}W", f"p{i}s", f"p{i}z"],
                                           [f"x{i + 1}"], domain=MS))
        fp32_nodes.append(helper.make_node("MatMul", [f"x{i}", f"p{i}w"], [f"x{i + 1}"], name=f"p{i}"))
    out = f"x{len(shapes)}"
    variants = {"DynamicQuantizeMatMul, per-channel int8 (default)": (_model(int8_nodes, [x], out, int8_inits, 18),
                                                                        len(shapes))}
    for block in (32, 128):
        model = onnx.load_from_string(_model(fp32_nodes, [x], out, weights, 18))
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        quantizer.process()
        variants[f"MatMulNBits 8-bit, block {block}"] = (quantizer.model.model.SerializeToString(), len(shapes))
    variants["fp32 reference"] = (_model(fp32_nodes, [x], out, weights, 18), len(shapes))
    return variants


def _activation_bias() -> np.ndarray:
    return (np.random.default_rng(2).standard_normal(FFN) * 0.1).astype(np.float32)


def _gelu_reference(x: np.ndarray, bias: np.ndarray, steps: int) -> np.ndarray:
    y = x.astype(np.float64)
    erf = np.vectorize(math.erf)
    for _ in range(steps):
        t = y + bias
        y = 0.5 * t * (1 + erf(t / math.sqrt(2)))
    return y


def measure(group: dict[str, tuple[bytes, int]], feed: dict, threads: int, rounds: int, runs: int,
            reference: np.ndarray | None) -> list[tuple[str, float, float]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    sessions = {name: (ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"]), chain)
                for name, (blob, chain) in group.items()}
    outputs = {name: s.run(None, feed)[0] for name, (s, _) in sessions.items()}
    if reference is None:
        reference = outputs.pop("fp32 reference", None)
        sessions.pop("fp32 reference", None)
    base = reference if reference is not None else outputs[next(iter(outputs))]
    valid = feed["mask"].astype(bool) if "mask" in feed else np.ones(base.shape[:-1], bool)
    # edgekit's own interleaving (A B C, then C B A, ...; the same input every run): ms per run, per round
    times = interleaved({name: (lambda i, s=session: s.run(None, feed)) for name, (session, _) in sessions.items()},
                        PairedOptions(rounds=rounds, runs=runs, warmup=2))
    scale = float(np.abs(base)[valid].max())
    return [(name, float(np.median([np.median(r) for r in times[name]])) / chain * 1e3,
             float(np.abs(outputs[name] - base)[valid].max()) / scale) for name, (_, chain) in sessions.items()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1x26,8x128", help="batch x sequence, comma-separated")
    p.add_argument("--threads", default=f"1,{len(os.sched_getaffinity(0))}")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    groups = {"attention": (attention_variants(rng), HIDDEN), "activation": (activation_variants(rng), FFN),
              "projection": (projection_variants(rng), HIDDEN)}
    print(f"onnxruntime {ort.__version__}; {os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} interleaved rounds x {args.runs} runs; microseconds per layer-op (median of round "
          "medians); ratio = default / variant (higher = variant faster)")
    threads = list(dict.fromkeys(int(t) for t in args.threads.split(",")))
    for title, (group, width) in groups.items():
        print(f"\n**{title}**\n")
        print("| variant | shape | " + " | ".join(f"{t} thr us | ratio" for t in threads) + " | rel. diff |")
        print("|---|---|" + "---|---|" * len(threads) + "---|")
        for text in args.shapes.split(","):
            batch, seq = (int(v) for v in text.split("x"))
            feed = {"x0": np.random.default_rng(1).standard_normal((batch, seq, width)).astype(np.float32)}
            if title == "attention":
                mask = np.ones((batch, seq), np.int64)
                mask[1:, seq - seq // 3:] = 0  # padded rows beside a full one
                feed["mask"] = mask
            reference = _gelu_reference(feed["x0"], _activation_bias(), ACTIVATIONS) if title == "activation" else None
            results = [measure(group, feed, t, args.rounds, args.runs, reference) for t in threads]
            for i, name in enumerate(n for n in group if n != "fp32 reference"):
                cells = " | ".join(f"{r[i][1]:.1f} | {r[0][1] / r[i][1]:.2f}x" for r in results)
                diff = "—" if name == BOUND else f"{results[0][i][2]:.1e}"
                print(f"| {name} | {text} | {cells} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
