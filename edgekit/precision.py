"""Precision carried in the ONNX graph, for strongly typed TensorRT / TensorRT-RTX builds.

TensorRT 11 and TensorRT-RTX take each tensor's type from the graph (TensorRT
10 does too under the STRONGLY_TYPED flag), so the precision of an engine is
decided here, before the build:

* **fp16**: ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  ``keep_io_types=True`` (int64 ids in, fp32 logits out). Chosen over
  onnxconverter-common (the same converter, which ONNX Runtime took over and
  keeps up to date for transformer graphs) because onnxruntime is already a
  dependency; NVIDIA's ModelOpt AutoCast would pull in torch and CUDA wheels.
  LayerNormalization (and the ReduceMean/Pow/Sqrt it decomposes into at older
  opsets) stays fp32: its variance overflows fp16 on long inputs, which is
  why TensorRT warns about fp16 layernorms. Softmax and Erf (GELU) stay fp16 so
  that TensorRT can fuse attention and GELU; measured on MiniLM SST-2 dev this
  keeps accuracy at 0.8716, the fp32 value.
* **int8**: Q/DQ from ``edgekit quantize --target tensorrt``. The layers that
  Q/DQ does not cover (embeddings, layernorms, residual adds) are converted to
  fp16 the same way by default, as TensorRT 10's INT8+FP16 flags did; Q/DQ
  scales become fp16, which needs opset 19, so the default-domain opset is
  raised to 19 (the ops that changed in 19 only gained types and attributes).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .deps import require
from .errors import InputError, ModelError, first_line

PRECISIONS = ("fp32", "fp16", "int8")
#: ops kept in fp32 by the fp16 conversion (added to ONNX Runtime's own block list)
FP16_KEEP_FP32 = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MATMUL_OPS = ("MatMul", "Gemm")
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin


def load_onnx(path: Path):
    """The model's graph without external weights, or a one-line ModelError."""
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model '{path}' not found", "no such file",
                         "Pass the model.onnx written by edgekit export or quantize, or its folder")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: the file is not an ONNX model
        raise ModelError(f"ONNX model '{path}' cannot be read", f"it is corrupt or not ONNX ({first_line(exc)})",
                         "Re-export it with edgekit export") from None


def graph_precision(model) -> dict:
    """What precision the graph carries: Q/DQ node counts and whether it holds fp16 tensors."""
    onnx = require("onnx")
    ops = Counter(n.op_type for n in model.graph.node)
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(t.data_type == fp16 for t in model.graph.initializer) or any(
        a.name == "to" and a.i == fp16 for n in model.graph.node if n.op_type == "Cast" for a in n.attribute)
    qdq = ops["QuantizeLinear"] + ops["DequantizeLinear"]
    kind = "int8" if qdq else "fp16" if has_fp16 else "fp32"
    return {"carries": kind, "quantize_nodes": ops["QuantizeLinear"], "dequantize_nodes": ops["DequantizeLinear"],
            "has_fp16": has_fp16, "matmul_nodes": sum(ops[o] for o in MATMUL_OPS),
            "cpu_int8_ops": sorted(o for o in ops if o in CPU_INT8_OPS)}


#: ONNX Runtime's integer ops, which `quantize --target cpu` writes (dynamic, asymmetric int8): no engine takes them
CPU_INT8_OPS = ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
                "QGemm", "QLinearMatMul", "ConvInteger", "QLinearConv")


def check_requested(onnx_path: Path, carried: dict, precision: str) -> None:
    """Refuse a precision the ONNX cannot give (one line, with the command that fixes it)."""
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision '{precision}'", None, f"Choose one of: {', '.join(PRECISIONS)}")
    have = carried["carries"]
    if carried.get("cpu_int8_ops"):  # TensorRT's parser failed on them later, with "replace the op" for a fix
        raise InputError(f"'{onnx_path}' was quantized for the CPU ({', '.join(carried['cpu_int8_ops'])})",
                         "an engine takes int8 only as symmetric Q/DQ pairs, not ONNX Runtime's integer ops",
                         "Quantize the fp32 export for the engine: edgekit quantize FP32_DIR --target tensorrt-rtx "
                         "--calibration-data DATA --out DIR, then build DIR; or build the fp32 export as fp16")
    if precision == "int8" and have != "int8":
        raise InputError(f"--precision int8 needs Q/DQ in the ONNX, and '{onnx_path}' has none",
                         "TensorRT 11 and TensorRT-RTX take int8 only from Q/DQ nodes (no implicit calibration)",
                         f"Run: edgekit quantize {onnx_path.parent} --target tensorrt --calibration-data DATA "
                         "--out DIR, then build DIR/model.onnx")
    if precision != "int8" and have == "int8":
        raise InputError(f"--precision {precision} was asked, but '{onnx_path}' carries int8 Q/DQ",
                         "a strongly typed build follows the graph's types", "Pass --precision int8, or build the "
                         "ONNX from before quantization")
    if precision == "fp32" and have == "fp16":
        raise InputError(f"--precision fp32 was asked, but '{onnx_path}' carries fp16 tensors",
                         "a strongly typed build follows the graph's types",
                         "Pass --precision fp16, or build the fp32 ONNX")


def needs_conversion(carried: dict, precision: str, int8_base: str) -> bool:
    """True when the graph must be rewritten to carry ``precision`` (fp16, or int8 over an fp16 base)."""
    if precision == "fp16":
        return not carried["has_fp16"]
    return precision == "int8" and int8_base == "fp16" and not carried["has_fp16"]


def to_fp16(src: Path, dst: Path, keep_fp32: tuple[str, ...] = FP16_KEEP_FP32) -> dict:
    """Write ``src`` with fp16 weights and activations to ``dst``; I/O types and ``keep_fp32`` ops stay fp32.

    Q/DQ nodes are converted too (their scales become fp16, DQ outputs fp16),
    so a Q/DQ graph becomes int8 over an fp16 base.
    """
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    model = onnx.load(str(src))  # with external data: the weights are rewritten
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    if has_qdq:
        _raise_default_opset(model, 19)
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32))
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    except Exception as exc:  # the converter raises bare Exceptions on graphs it cannot type
        raise ModelError(f"fp16 conversion of '{src}' failed", first_line(exc),
                         "Pass an ONNX that already carries fp16, or build --precision fp32") from None
    toposort(converted.graph)
    kept = sum(1 for n in converted.graph.node if n.op_type in keep_fp32)
    save_onnx(converted, dst)
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True, "kept_fp32_ops": list(keep_fp32),
            "kept_fp32_nodes": kept, "qdq_scales_fp16": has_qdq,
            "casts_added": sum(1 for n in converted.graph.node if n.op_type == "Cast")
            - sum(1 for n in model.graph.node if n.op_type == "Cast")}


def _raise_default_opset(model, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version


def toposort(graph) -> None:
    """Order ``graph.node`` topologically in place (the converter appends its casts at the end)."""
    produced_by = {out: i for i, n in enumerate(graph.node) for out in n.output if out}
    nodes = list(graph.node)
    done: set[int] = set()
    order: list[int] = []
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(i)
                continue
            stack.append((i, True))
            for name in nodes[i].input:
                j = produced_by.get(name)
                if j is not None and j not in done and j != i:
                    stack.append((j, False))
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def save_onnx(model, dst: Path) -> None:
    """Save, with weights in a ``.data`` file beside it when the model is near protobuf's 2 GB limit."""
    onnx = require("onnx")
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(dst).name + ".data")
    else:
        onnx.save_model(model, str(dst))


def int8_matmul_nodes(model) -> list[str]:
    """Names of the MatMul/Gemm nodes meant to run in int8: both of their inputs come from DequantizeLinear."""
    produced = {out: n.op_type for n in model.graph.node for out in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type in MATMUL_OPS and node.name and len(node.input) >= 2:
            if all(produced.get(name) == "DequantizeLinear" for name in node.input[:2]):
                names.append(node.name)
    return names
