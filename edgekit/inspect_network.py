"""Parse an ONNX into a TensorRT network and prove, without a GPU, which precision each layer has.

Strongly typed networks carry each tensor's type, so after parsing we can
walk ``network.get_layer(i)`` and read every layer's output types, and trace
each MatMul/Gemm input back (through shape-only layers) to the
IDequantizeLayer that feeds it. That is the check against the fp32-engine trap:
an int8 build whose MatMuls are not fed by DQ, or an fp16 build whose MatMuls
compute in fp32, fails (or warns with ``allow_fallback``). On a host with a GPU
the built engine's own layer information (engine inspector) is read as well.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .atomic import signals_held
from .errors import BackendError, ModelError

#: layers that only move or reshape data: a DQ behind them still feeds the consumer
PASS_THROUGH = ("SHUFFLE", "IDENTITY", "SQUEEZE", "UNSQUEEZE")
WANTED_MATMUL_TYPE = {"fp16": "HALF", "fp32": "FLOAT"}
PARSER_FIX = ("Replace the op with supported ones before export (see the TensorRT ONNX operator support matrix), "
              "or register a TensorRT plugin for it")


def make_logger(trt):
    """A TensorRT logger that keeps messages (errors go into our one-line errors, not onto stderr)."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):
            try:
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    self.warnings.append(msg)
            except BaseException:  # noqa: BLE001  (raised into TensorRT, it is printed as a stack and dropped)
                pass

    return Logger()


def build_interruptibly(trt, builder, network, config):
    """``builder.build_serialized_network`` that Ctrl-C and SIGTERM stop.

    A Python signal handler runs in whatever Python code comes next, and during a build that is a TensorRT
    callback (the logger): the bindings catch the KeyboardInterrupt, print a stack dump and build on, so the
    command ended with a whole engine and exit 0. Here the signal is only recorded while TensorRT works; a
    progress monitor cancels the build at its next step, and the signal is delivered once the call returns.
    """
    with signals_held() as came:
        if hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):
            config.progress_monitor = _canceller(trt, came)
        return builder.build_serialized_network(network, config)


def _canceller(trt, came: list):
    class Canceller(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            pass

        def phase_finish(self, phase_name):
            pass

        def step_complete(self, phase_name, step):
            return not came  # False cancels the build

    return Canceller()


def network_flags(trt) -> int:
    """STRONGLY_TYPED where the flag exists (required on TensorRT 10, accepted and implied on 11 and RTX)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def parse(trt, onnx_path: Path, backend_name: str, shown: str | Path | None = None):
    """Builder, network, parser and logger for ``onnx_path``; keep all four alive while using the network.
    ``shown``: how errors name the file (a staged rewrite is gone by the time the user reads them)."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendError(f"{backend_name} could not create a builder", "; ".join(logger.errors[:2]) or None,
                           "Check the installation with edgekit doctor")
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    with signals_held():  # a signal inside the parser's callbacks would be printed and dropped (see above)
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        raise parser_error(parser, shown or onnx_path, backend_name, logger)
    return builder, network, parser, logger


def parser_error(parser, onnx_path: Path, backend_name: str, logger) -> ModelError:
    """The parser's first error as one line naming the node and op it rejected."""
    if parser.num_errors == 0:
        why = "; ".join(logger.errors[:2]) or "no detail given"
        return ModelError(f"{backend_name} cannot parse '{onnx_path}'", why, "Re-export the model with edgekit export")
    err = parser.get_error(0)
    desc = " ".join(str(err.desc()).split())[:240]
    name, op = _safe(err.node_name), _safe(err.node_operator)
    if name or op:
        return ModelError(f"{backend_name} cannot parse node '{name}' (op {op}) of '{onnx_path}'",
                          f"{err.code().name}: {desc}", PARSER_FIX)
    return ModelError(f"{backend_name} cannot parse '{onnx_path}'", f"{err.code().name}: {desc}",
                      "Check that the file is a complete ONNX model; re-export it with edgekit export")


def _safe(getter) -> str:
    try:
        return str(getter() or "")
    except Exception:  # older parsers lack node_name/node_operator
        return ""


def producers(network) -> dict:
    """Tensor name -> the layer that writes it, over a parsed network."""
    producer = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
    return producer


def walk(network) -> dict:
    """Per-layer precision summary and, for every MatMul layer, what feeds its inputs."""
    producer = producers(network)
    by_type: dict[str, Counter] = {}
    matmuls = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        out = layer.get_output_type(0).name if layer.num_outputs else "NONE"
        by_type.setdefault(kind, Counter())[out] += 1
        if kind == "MATRIX_MULTIPLY":
            sources = [_source(layer.get_input(j), producer) for j in range(min(2, layer.num_inputs))]
            matmuls.append({"name": layer.name, "output": out,
                            "inputs": [t.dtype.name for t in (layer.get_input(j) for j in range(layer.num_inputs))],
                            "fed_by": sources, "int8": bool(sources) and all(s == "DEQUANTIZE" for s in sources)})
    count = Counter(m["output"] for m in matmuls)
    return {"layers": network.num_layers,
            "layer_types": {k: dict(v) for k, v in sorted(by_type.items())},
            "quantize_layers": sum(by_type.get("QUANTIZE", Counter()).values()),
            "dequantize_layers": sum(by_type.get("DEQUANTIZE", Counter()).values()),
            "matmul": {"total": len(matmuls), "int8": sum(m["int8"] for m in matmuls),
                       "fp16": count.get("HALF", 0), "fp32": count.get("FLOAT", 0)},
            "matmuls": matmuls}


def _source(tensor, producer) -> str:
    """The type of the layer that really produces ``tensor``, looking through shape-only layers."""
    for _ in range(16):
        layer = producer.get(tensor.name)
        if layer is None:
            return "INPUT"
        if layer.type.name not in PASS_THROUGH or layer.num_inputs == 0:
            return layer.type.name
        tensor = layer.get_input(0)
    return "UNKNOWN"


def verify(summary: dict, precision: str, int8_nodes: list[str] | None = None) -> list[str]:
    """What in the parsed network contradicts ``precision`` (empty when it holds)."""
    matmuls = summary["matmuls"]
    if not matmuls:
        return []
    if precision == "int8":
        fed = {m["name"] for m in matmuls if m["int8"]}
        if not fed:
            return [f"none of the {len(matmuls)} MatMul layers is fed by Q/DQ, so the engine would run them in "
                    "fp16/fp32"]
        missing = [n for n in (int8_nodes or []) if n not in fed]
        if missing:
            return [f"{len(missing)} MatMul(s) quantized in the ONNX are not fed by DQ after parsing "
                    f"({', '.join(missing[:3])})"]
        return []
    want = WANTED_MATMUL_TYPE[precision]
    floating = [m for m in matmuls if m["output"] in ("FLOAT", "HALF", "BF16")]
    wrong = [m["name"] for m in floating if m["output"] != want]
    if wrong:
        return [f"{len(wrong)} of {len(floating)} MatMul layers compute in {_human(floating, wrong)} instead of "
                f"{precision} ({', '.join(wrong[:3])})"]
    return []


def _human(floating, wrong) -> str:
    types = {m["output"] for m in floating if m["name"] in set(wrong)}
    return "/".join(sorted({"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16"}.get(t, t) for t in types))


def inspect_engine(trt, engine_bytes, logger) -> dict:
    """Per-layer precision from the built engine (engine inspector); needs a GPU to deserialize."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BackendError("The built engine could not be deserialized for inspection",
                           "; ".join(logger.errors[-2:]) or None, "Run edgekit doctor to check the GPU and driver")
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    types: Counter = Counter()
    for layer in info.get("Layers", []):
        if isinstance(layer, dict):
            for out in layer.get("Outputs", []):
                types[_dtype_of(out)] += 1
    return {"layers": len(info.get("Layers", [])), "output_types": dict(types)}


def _dtype_of(entry: dict) -> str:
    """Data type of an inspector I/O entry: 'DataType' in TensorRT 11, inside 'Format/Datatype' in 10."""
    if "DataType" in entry:
        return str(entry["DataType"])
    text = str(entry.get("Format/Datatype", ""))
    for token in ("FP32", "FP16", "BF16", "Int8", "INT8", "Int32", "Int64", "FP8", "Bool"):
        if token in text:
            return token.upper()
    return text or "unknown"


def verify_engine(info: dict, precision: str) -> list[str]:
    """The engine-level trap: every layer of a reduced-precision engine came out fp32."""
    types = {k.upper() for k in info.get("output_types", {})}
    if precision != "fp32" and types and types <= {"FP32", "FLOAT", "INT32", "INT64", "BOOL"}:
        return [f"the built engine's {info['layers']} layers all run in fp32/int, none in {precision}"]
    return []
