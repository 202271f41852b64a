"""Decoder graphs for TensorRT-RTX: fp16 compute with an fp16 KV cache, and int4 weight-only block Q/DQ.

TensorRT-RTX is strongly typed, so the precision of a decoder engine is the
precision of its ONNX. Both rewrites start from the fp32 ``torch.onnx``
(dynamo) export at opset 21, whose ops are all standard ONNX (onnxruntime-genai's
builder graphs use ``com.microsoft`` GroupQueryAttention, which the
TensorRT-RTX 1.7 parser rejects: measured, see bench/llm-rtx.md).

* **fp16** (:func:`to_fp16_decoder`): ONNX Runtime's float16 converter, with
  ``logits`` kept fp32 and the KV cache fp16 (half the cache memory). Kept in
  fp32: the RMSNorm variance chain (Pow, ReduceMean, eps Add, Sqrt,
  Reciprocal: mean(x^2) overflows fp16 on outlier activations) and the rotary
  position chain up to Cos/Sin (a position of 2048 has an fp16 spacing of 2,
  so fp16 angles would be wrong past a few hundred tokens).
* **int4** (:func:`quantize_int4`): every MatMul whose weight is a 2-D
  initializer (directly or through a Transpose, as tied embeddings export)
  gets ``DequantizeLinear(int4 weight, fp16 scale, axis=0, block_size=B)``
  in front of it: symmetric blocks of B input rows per output column, no zero
  point (TensorRT's IDequantizeLayer accepts no non-zero int4 zero point),
  activations stay fp16. This is TensorRT's int4 weight-only (WoQ) form;
  ONNX Runtime's CPU EP runs the same graph (opset 21 block DQ), so the gate
  measures exactly what the engine computes up to kernel rounding.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..deps import require
from ..errors import InputError, ModelError, first_line
from ..precision import FP16_KEEP_FP32, toposort

RTX_OPSET = 21  # int4 and blocked DequantizeLinear need opset 21
BLOCK_SIZES = (16, 32, 64, 128, 256)
KEEP_FP32_OUTPUTS = ("logits",)


def fp32_node_names(graph) -> list[str]:
    """Nodes that stay fp32: the rotary chain feeding Cos/Sin, and each RMSNorm's eps Add / Sqrt / Reciprocal."""
    producer = {out: n for n in graph.node for out in n.output if out}
    consumers = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            consumers[name].append(n)
    keep: set[str] = set()
    stack = [n for n in graph.node if n.op_type in ("Cos", "Sin")]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    for node in graph.node:
        if node.op_type != "Sqrt":
            continue
        keep.add(node.name)
        before = producer.get(node.input[0])
        if before is not None and before.op_type == "Add":
            keep.add(before.name)
        keep.update(c.name for c in consumers[node.output[0]] if c.op_type in ("Reciprocal", "Div"))
    return sorted(keep)


def to_fp16_decoder(model) -> tuple[object, dict]:
    """``model`` (fp32 ModelProto with its weights) rewritten to fp16; returns (model, what was kept fp32)."""
    float16 = require("onnxruntime.transformers.float16")
    _name_nodes(model.graph)
    nodes = fp32_node_names(model.graph)
    ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=list(KEEP_FP32_OUTPUTS),
                                                     op_block_list=ops, node_block_list=nodes)
    except Exception as exc:  # the converter raises bare Exceptions on graphs it cannot type
        raise ModelError("fp16 conversion of the decoder failed", first_line(exc), "Report the architecture") from None
    skipped = drop_fp16_round_trips(converted.graph)
    toposort(converted.graph)
    prune_unused(converted.graph)
    return converted, {"fp16_round_trips_removed": skipped, "converter": "onnxruntime.transformers.float16", "fp32_outputs": list(KEEP_FP32_OUTPUTS),
                       "kv_cache": "fp16", "fp32_nodes": len(nodes),
                       "fp32_chains": ["rotary positions up to Cos/Sin", "RMSNorm variance (Pow, ReduceMean, eps Add, "
                                                                          "Sqrt, Reciprocal)"]}


def drop_fp16_round_trips(graph) -> int:
    """Rewire ``Cast(to fp32)(Cast(to fp16)(x))`` to ``x``: the converter casts every blocked node's output back
    to fp16, so an fp32 chain (ReduceMean -> Add -> Sqrt) would pass through fp16 between its nodes, and the
    RMSNorm variance of an outlier token (SmolLM2: mean(x^2) ~ 1e6 > 65504) would overflow right there."""
    onnx = require("onnx")
    producer = {out: n for n in graph.node for out in n.output if out}
    to = {n.name: next((a.i for a in n.attribute if a.name == "to"), None) for n in graph.node if n.op_type == "Cast"}
    outputs = {o.name for o in graph.output}
    rename = {}
    for node in graph.node:
        if node.op_type != "Cast" or to.get(node.name) != onnx.TensorProto.FLOAT or node.output[0] in outputs:
            continue
        inner = producer.get(node.input[0])
        if inner is not None and inner.op_type == "Cast" and to.get(inner.name) == onnx.TensorProto.FLOAT16 \
                and _is_fp32_cast_source(inner, producer, to, onnx):
            rename[node.output[0]] = inner.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return len(rename)


def _is_fp32_cast_source(cast, producer, to, onnx) -> bool:
    """True when the fp16 Cast's input is fp32: the converter's own ``*_cast_to_fp16`` after a blocked node."""
    src = producer.get(cast.input[0])
    if src is not None and src.op_type == "Cast":
        return to.get(src.name) == onnx.TensorProto.FLOAT
    return cast.input[0].endswith("_cast_to_fp16") or cast.name.endswith("_cast_to_fp16_node")


def _name_nodes(graph) -> None:
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


# amax / 7 times these: 1.0 first (round to nearest), then clipped steps (7/8: a block's largest magnitude maps
# onto the code -8 when it is negative)
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.875, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)


def check_block_size(block_size: int) -> None:
    """An InputError for an int4 block size the Q/DQ rewrite does not take (0, "auto", is the caller's to resolve)."""
    if block_size not in BLOCK_SIZES:
        raise InputError(f"Unsupported int4 block size {block_size}", None,
                         f"Choose one of: {', '.join(map(str, BLOCK_SIZES))}, or leave it out")


def quantize_int4(model, block_size: int, skip_columns: int | None = None,
                  importance: dict[str, np.ndarray] | None = None, keep_sensitive: int = 0,
                  keep_weights: tuple[str, ...] = ()) -> dict:
    """Put int4 block DQ in front of every 2-D weight MatMul of ``model`` (fp16, in place); the counts.

    ``skip_columns``: leave MatMuls with that many output columns (the vocab: ``lm_head``) in fp16.
    ``importance``: per MatMul node, the mean square of each input channel on calibration prompts
    (:func:`input_importance`); the scale search then minimises the error of the MatMul's output, not of the weight.
    ``keep_sensitive``: leave that many MatMuls in fp16, those whose int4 weights change their output most
    (relative, importance-weighted squared error; the idea of llama.cpp's k-quant mixes, chosen by measurement).
    ``keep_weights``: module names (``model.layers.3.self_attn.v_proj``) whose MatMuls stay fp16 — those an AWQ
    fit left unrounded (:func:`edgekit.llm.awq.sensitive_linears`); matched on the module path the exporter
    recorded on the MatMul (or the weight initializer's name).
    """
    block_size = block_size or auto_block_size(model.graph)
    check_block_size(block_size)
    onnx = require("onnx")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output if out}
    owner: dict[str, str] = {}
    planned, kept = [], []
    for node in list(graph.node):
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        weight, transposed = _weight_of(node.input[1], inits, producer)
        if weight is None or node.input[1] in owner:
            continue
        array = onnx.numpy_helper.to_array(weight).astype(np.float32)
        array = array.T if transposed else array
        if array.ndim != 2 or array.shape[0] % block_size or array.shape[1] == skip_columns:
            kept.append({"node": node.name, "shape": list(array.shape),
                         "why": "lm_head kept fp16" if array.shape[1] == skip_columns else "rows not a block multiple"})
            continue
        owner[node.input[1]] = node.name
        scopes = _scopes(node)
        if keep_weights and _named([weight.name] + [f"{m}.weight" for m in scopes], keep_weights):
            kept.append({"node": node.name, "shape": list(array.shape), "module": scopes[-2] if len(scopes) > 1
                         else weight.name,
                         "why": "kept fp16: left unrounded by the AWQ fit (sensitive)"})
            continue
        imp = (importance or {}).get(node.name)
        q, scale = quantize_blocks(array, block_size, importance=imp)
        rows = np.ones(array.shape[0]) if imp is None else np.asarray(imp, np.float64)
        error = float((rows[:, None] * np.square(dequantize_blocks(q, scale, block_size) - array)).sum()
                      / max((rows[:, None] * np.square(array)).sum(), 1e-30))
        planned.append((node, q, scale, error))
    sensitive = {id(p[0]) for p in sorted(planned, key=lambda p: -p[3])[:max(keep_sensitive, 0)]}
    done: dict[str, str] = {}
    new_nodes = []
    for node, q, scale, error in planned:
        if id(node) in sensitive:
            kept.append({"node": node.name, "shape": list(q.shape),
                         "why": f"sensitive: relative output error {error:.4f} in int4"})
            continue
        dq_out = f"{node.name}.weight_int4_dq"
        graph.initializer.extend(pack_int4(f"{node.name}.weight", q, scale))
        new_nodes.append(onnx.helper.make_node(
            "DequantizeLinear", [f"{node.name}.weight_int4", f"{node.name}.weight_scale"], [dq_out],
            name=f"{node.name}_DequantizeLinear", axis=0, block_size=block_size))
        done[node.input[1]] = dq_out
    for node in graph.node:  # every reader of a quantized weight (a tied embedding's copy too) reads its DQ
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in done:
            node.input[1] = done[node.input[1]]
    graph.node.extend(new_nodes)
    toposort(graph)
    removed = prune_unused(graph)
    errors = [p[3] for p in planned]
    found = [k["module"] for k in kept if "module" in k]
    missing = [m for m in keep_weights if not any(f == m or f.endswith(f".{m}") for f in found)]
    if missing:  # the fit left them unrounded for nothing: this rewrite rounded them plainly
        from .. import progress  # noqa: PLC0415

        progress.echo(f"[edgekit] warning: {len(missing)} linears to keep fp16 have no MatMul in the graph "
                      f"({', '.join(missing[:3])}...): rounded to int4 instead")
    return {"block_size": block_size, "keep_weights_not_found": missing, "symmetric": True, "scale_dtype": "fp16",
            "axis": 0,
            "scale_search": "activation-weighted squared error" if importance else "squared error",
            "quantized_matmuls": len(new_nodes), "kept_fp16": kept, "removed_initializers": removed,
            "relative_output_error": {"mean": round(float(np.mean(errors)), 5) if errors else None,
                                      "max": round(float(np.max(errors)), 5) if errors else None}}


def input_importance(model, prompts: list[list[int]], work: Path) -> dict[str, np.ndarray]:
    """Mean square of each input channel of every weight MatMul's activation, over ``prompts`` on ORT CPU.

    A copy of ``model`` with those activations as extra outputs is written to ``work`` (removed after) and run
    once per prompt from an empty cache.
    """
    from .loop import DecoderSession  # noqa: PLC0415

    onnx = require("onnx")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output if out}
    readers: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and _weight_of(node.input[1], inits, producer)[0] is not None:
            readers[node.input[0]].append(node.name)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(a) for a in readers if a not in outputs)
    work.mkdir(parents=True, exist_ok=True)
    try:
        onnx.save_model(probe, str(work / "probe.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="probe.onnx.data", size_threshold=1024)
        del probe
        decoder = DecoderSession(work / "probe.onnx")
        names = list(readers)
        sums: dict[str, np.ndarray] = {}
        count = 0
        for ids in prompts:
            seq = np.asarray([ids])
            acts = decoder.session.run(names, decoder.feeds(seq, np.ones_like(seq), decoder.empty_cache(1)))
            for name, act in zip(names, acts, strict=True):
                sq = np.square(act.astype(np.float64).reshape(-1, act.shape[-1])).sum(axis=0)
                sums[name] = sums.get(name, 0.0) + sq
            count += seq.shape[1]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {node: sums[a] / max(count, 1) for a, nodes in readers.items() for node in nodes}


def _named(weights: list[str], modules: tuple[str, ...]) -> bool:
    """True when one of ``weights`` is the weight of one of ``modules`` (``model.model.layers.1.mlp.down_proj.weight``
    for ``model.layers.1.mlp.down_proj``; never ``layers.11`` for ``layers.1``)."""
    return any(w == f"{m}.weight" or w.endswith(f".{m}.weight") for w in weights for m in modules)


def _scopes(node) -> list[str]:
    """The module paths the dynamo exporter recorded on ``node`` (its ``pkg.torch.onnx.name_scopes``, outermost
    first): the weight initializers themselves are renamed (``val_83``) when the exporter folds their transpose."""
    import ast  # noqa: PLC0415

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [str(s) for s in ast.literal_eval(prop.value)]
            except (ValueError, SyntaxError):
                return []
    return []


def auto_block_size(graph) -> int:
    """The largest of 128, 64, 32, 16 that divides every weight MatMul's input rows (SmolLM2's 576: 64)."""
    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output if out}
    rows = set()
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1:
            weight, transposed = _weight_of(node.input[1], inits, producer)
            if weight is not None:
                rows.add(int(weight.dims[1] if transposed else weight.dims[0]))
    return next((b for b in (128, 64, 32, 16) if all(r % b == 0 for r in rows)), 16)


def _weight_of(name: str, inits: dict, producer: dict):
    """(initializer, transposed) behind a MatMul's second input, or (None, False) for an activation."""
    if name in inits and len(inits[name].dims) == 2:
        return inits[name], False
    node = producer.get(name)
    if node is not None and node.op_type == "Transpose" and node.input[0] in inits:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if perm == [1, 0] and len(inits[node.input[0]].dims) == 2:
            return inits[node.input[0]], True
    return None, False


def pack_int4(prefix: str, q: np.ndarray, scale: np.ndarray) -> list:
    """``{prefix}_int4`` (packed int4 [K, N]) and ``{prefix}_scale`` (fp16 [K / block, N]) from codes ``q`` and
    ``scale`` (:func:`quantize_blocks`: symmetric blocks along K)."""
    onnx = require("onnx")
    flat = q.reshape(-1).astype(np.int16)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int16)])
    packed = ((flat[0::2] & 0xF) | ((flat[1::2] & 0xF) << 4)).astype(np.uint8)  # first element in the low nibble
    qt = onnx.helper.make_tensor(f"{prefix}_int4", onnx.TensorProto.INT4, list(q.shape), packed.tobytes(), raw=True)
    st = onnx.numpy_helper.from_array(scale.astype(np.float16), f"{prefix}_scale")
    return [qt, st]


def quantize_blocks(weight: np.ndarray, block_size: int, search: bool = True,
                    importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 codes in [-8, 7] and fp16-representable scales for blocks of rows.

    ``search``: each block's scale is the one of :data:`CLIP_RATIOS` x amax / 7 with the least squared error on
    that block (round-to-nearest's amax / 7 is the first candidate, so the error never grows); one outlier no
    longer stretches the step of the whole block. Off: plain amax / 7. ``importance`` ([K], the mean square of
    each input channel, as llama.cpp's importance matrix) weights each row's error by how large its input runs.
    """
    k, n = weight.shape
    blocks = weight.reshape(k // block_size, block_size, n)
    rows = np.ones((k // block_size, block_size, 1), np.float32) if importance is None else \
        (np.asarray(importance, np.float32) + 1e-6 * float(np.mean(importance)) + 1e-12).reshape(-1, block_size, 1)
    amax = np.abs(blocks).max(axis=1)
    best_scale, best_err = None, None
    for ratio in (CLIP_RATIOS if search else (1.0,)):
        scale = _fp16_scale(amax * (ratio / 7.0))
        q = np.clip(np.rint(blocks / scale[:, None, :]), -8, 7)
        err = (rows * np.square(q * scale[:, None, :] - blocks)).sum(axis=1)
        if best_scale is None:
            best_scale, best_err = scale, err
        else:
            better = err < best_err
            best_scale = np.where(better, scale, best_scale)
            best_err = np.where(better, err, best_err)
    q = np.clip(np.rint(blocks / best_scale[:, None, :]), -8, 7).astype(np.int8).reshape(k, n)
    return q, best_scale


def _fp16_scale(scale: np.ndarray) -> np.ndarray:
    return np.where(scale == 0, 1.0, scale).astype(np.float16).astype(np.float32)


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, block_size: int) -> np.ndarray:
    """The weight the DQ node gives back (for a PyTorch reference with the same weights)."""
    return (q.astype(np.float32).reshape(-1, block_size, q.shape[1]) * scale[:, None, :]).reshape(q.shape)


def prune_unused(graph) -> int:
    """Drop nodes and initializers nothing reads any more (the fp16 weights and Transposes int4 replaced)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | outputs
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return len(unused)
