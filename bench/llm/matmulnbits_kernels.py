"""One MatMulNBits node, one decode step (M = 1), 2 threads: what each weight layout and accuracy_level costs on
this CPU. The figures quoted in edgekit/llm/source_blocks.py, quantize.LEVEL_8BIT and bench/llm.md (1d).

    python bench/llm/matmulnbits_kernels.py      # ~1 min; median of 200 runs each, random weights

Rows: SmolLM2's LM head (576 -> 49152) as fp32 MatMul and as 8-/4-bit blocks; an MLP layer (576 -> 1536) as fp32
and 4-bit with no zero point, a uint8 zero point and a float zero point, at levels 4 (int8 activations) and 1.
"""

from __future__ import annotations

import time

import numpy as np
import edgekit  # noqa: F401  (before onnxruntime: it turns ORT's telemetry off, which writes $TMPDIR/.ses)
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def model(k: int, n: int, bits: int = 0, level: int = 4, zero_point: str = "none") -> bytes:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])
    rng = np.random.default_rng(0)
    if not bits:
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
        graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g", [x], [y], [w])
    else:
        nb = k // 32
        inits = [numpy_helper.from_array(rng.integers(0, 256, (n, nb, 32 * bits // 8), dtype=np.uint8), "B"),
                 numpy_helper.from_array(rng.random(n * nb).astype(np.float32), "S")]
        if zero_point == "uint8":
            packed = n * ((nb * bits + 7) // 8)
            inits.append(numpy_helper.from_array(np.full(packed, 0x88 if bits == 4 else 128, np.uint8), "Z"))
        elif zero_point == "float":
            inits.append(numpy_helper.from_array((rng.random(n * nb) * 8).astype(np.float32), "Z"))
        node = helper.make_node("MatMulNBits", ["X", "B", "S", *(["Z"] if zero_point != "none" else [])], ["Y"],
                                domain="com.microsoft", K=k, N=n, bits=bits, block_size=32, accuracy_level=level)
        graph = helper.make_graph([node], "g", [x], [y], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def median_ms(blob: bytes, runs: int = 200) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, session.get_inputs()[0].shape[1])).astype(np.float32)
    for _ in range(10):
        session.run(None, {"X": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"X": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


ROWS = [("head 576x49152, fp32 MatMul", dict(k=576, n=49152)),
        ("head, 8-bit, level 4", dict(k=576, n=49152, bits=8, level=4)),
        ("head, 8-bit, level 1", dict(k=576, n=49152, bits=8, level=1)),
        ("head, 4-bit, level 4", dict(k=576, n=49152, bits=4, level=4)),
        ("MLP 576x1536, fp32 MatMul", dict(k=576, n=1536)),
        ("MLP, 4-bit, level 4", dict(k=576, n=1536, bits=4, level=4)),
        ("MLP, 4-bit, level 1", dict(k=576, n=1536, bits=4, level=1)),
        ("MLP, 4-bit, uint8 zero point, level 4", dict(k=576, n=1536, bits=4, level=4, zero_point="uint8")),
        ("MLP, 4-bit, float zero point, level 4", dict(k=576, n=1536, bits=4, level=4, zero_point="float")),
        ("MLP, 4-bit, float zero point, level 1", dict(k=576, n=1536, bits=4, level=1, zero_point="float"))]

if __name__ == "__main__":
    print(f"onnxruntime {ort.__version__}\n\n| node | ms per call (median of 200) |\n|---|---|")
    for name, spec in ROWS:
        print(f"| {name} | {median_ms(model(**spec)):.3f} |", flush=True)
