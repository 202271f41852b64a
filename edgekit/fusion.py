"""Transformer fusions for ONNX Runtime's CPU provider: fused Attention, SkipLayerNormalization, BiasGelu.

The dynamo exporter writes attention as SDPA with its mask ops (IsNaN / Where
per layer); ``onnxruntime.transformers.optimizer`` does not match that form and
leaves attention unfused. onnxscript's ORT fusions (``optimize_for_ort``) do:
they rebuild SDPA, then MultiHeadAttention, then Attention with packed QKV
weights. The packed weights come out as a ``Concat`` of three initializers that
would run on every call (and that the int8 quantizer cannot see as weights), so
they are folded into one initializer here. ORT's own optimizer stays as the
fallback for graphs onnxscript does not fuse; whichever fuses more attention
wins, and the fused graph must match the unfused one on sample inputs or it is
not used.
"""

from __future__ import annotations

import collections
import contextlib
import io
from pathlib import Path

import numpy as np

from .deps import require

#: op types counted as fusions in the manifest (com.microsoft contrib ops)
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu",
             "EmbedLayerNormalization", "SkipSimplifiedLayerNormalization")
#: max |logit diff| allowed between the fused and the unfused fp32 graph
FUSION_ATOL = 1e-3
_FOLD_LIMIT = 1 << 30


def fused_op_counts(path: str | Path) -> dict[str, int]:
    """How many of each fused contrib op a model holds (zero counts left out)."""
    onnx = require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    counts = collections.Counter(n.op_type for n in graph.node if n.domain == "com.microsoft")
    return {op: counts[op] for op in FUSED_OPS if counts[op]}


def onnxscript_fuse(source: Path, dest: Path) -> dict[str, int]:
    """onnxscript's ORT fusions, packed QKV weights folded into initializers. Returns fused op counts."""
    ir = require("onnx_ir")
    fusions = require("onnxscript.rewriter.ort_fusions")
    optimizer = require("onnxscript.optimizer")
    model = ir.load(str(source))
    with contextlib.redirect_stdout(io.StringIO()):
        model, _ = fusions.optimize_for_ort(model)
        optimizer.fold_constants(model, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)
        ir.passes.common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)(model)
        ir.passes.common.RemoveUnusedNodesPass()(model)
    ir.save(model, str(dest))
    attention_mask_index(dest)
    return fused_op_counts(dest)


def ort_fuse(source: Path, dest: Path, model_type: str, num_heads: int, hidden_size: int) -> dict[str, int]:
    """``onnxruntime.transformers.optimizer`` fusions (level 1). Returns fused op counts."""
    optimizer = require("onnxruntime.transformers.optimizer")
    with contextlib.redirect_stdout(io.StringIO()):
        model = optimizer.optimize_model(str(source), model_type=model_type, num_heads=num_heads,
                                         hidden_size=hidden_size, opt_level=1)
        model.save_model_to_file(str(dest))
    return fused_op_counts(dest)


def max_output_diff(reference: Path, candidate: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """Largest |difference| of the first output of two graphs over ``feeds`` (ONNX Runtime, CPU)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    a = ort.InferenceSession(str(reference), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in a.get_inputs()}
    worst = 0.0
    for feed in feeds:
        feed = {k: v for k, v in feed.items() if k in names}
        worst = max(worst, float(np.abs(a.run(None, feed)[0] - b.run(None, feed)[0]).max()))
    return worst


def attention_count(counts: dict[str, int]) -> int:
    return counts.get("Attention", 0) + counts.get("MultiHeadAttention", 0)


def attention_mask_index(path: Path, mask_input: str = "attention_mask") -> int:
    """Feed fused Attention the raw 2-D padding mask (``mask_index``) instead of a computed additive bias.

    onnxscript's fusion feeds each Attention an additive bias built from the
    padding mask (Where over a broadcast mask). ONNX Runtime's int8 quantizer
    turns Attention into QAttention (int8 QKV) only without ``qkv_hidden_sizes``
    and it carries ``mask_index``, not a bias, across; both are rewritten here
    for encoder (non-causal) attention. Equal Q/K/V sizes only. Returns how
    many nodes were rewritten; the caller checks the graph still matches.
    """
    onnx = require("onnx")
    model = onnx.load(str(path))
    graph = model.graph
    if mask_input not in {i.name for i in graph.input}:
        return 0
    cast_name, changed = f"{mask_input}_int32", 0
    for node in graph.node:
        if node.op_type != "Attention" or node.domain != "com.microsoft" or len(node.input) < 6:
            continue
        sizes = next((list(a.ints) for a in node.attribute if a.name == "qkv_hidden_sizes"), None)
        if (sizes and len(set(sizes)) != 1) or node.input[3] or node.input[4]:
            continue
        inputs = list(node.input[:3]) + [cast_name]
        del node.input[:]
        node.input.extend(inputs)
        kept = [a for a in node.attribute if a.name != "qkv_hidden_sizes"]
        del node.attribute[:]
        node.attribute.extend(kept)
        changed += 1
    if changed:
        cast = onnx.helper.make_node("Cast", [mask_input], [cast_name], name=f"{cast_name}_cast",
                                     to=onnx.TensorProto.INT32)
        graph.node.insert(0, cast)
        _drop_dead_nodes(graph)
        onnx.save(model, str(path))
    return changed


def _drop_dead_nodes(graph) -> None:
    """Remove nodes whose outputs nothing reads (the unused mask-bias chain)."""
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for n in graph.node for name in n.input}
    unused = [t for t in graph.initializer if t.name not in read]
    for tensor in unused:
        graph.initializer.remove(tensor)


def split_skip_layernorm(source: str | Path, dest: str | Path) -> dict:
    """Write ``dest``: ``source`` with each SkipLayerNormalization as ``Sum(input, skip[, bias])`` +
    LayerNormalization (same sum, same normalization; the float additions in another order).

    ONNX Runtime 1.32's CPU SkipLayerNormalization kernel measured 1.6-3.8x
    slower than Sum + LayerNormalization at encoder shapes (1 x 26 x 384: 108
    vs 36 us; bench/fusion/README.md), and its optimizer re-fuses a plain
    ``Add`` + LayerNormalization into the slow op; ``Sum`` it leaves alone.
    A node whose mean / inverse-std outputs are read is kept as it is.
    """
    onnx = require("onnx")
    model = onnx.load(str(source))
    graph = model.graph
    if not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in model.opset_import):
        return {"applied": False, "reason": "LayerNormalization needs opset 17"}
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    nodes, split = [], 0
    for node in graph.node:
        outs = list(node.output) + [""] * (4 - len(node.output))
        if (node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft"
                or outs[1] in read or outs[2] in read):
            nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        summed = outs[3] if outs[3] in read else f"{node.output[0]}_skip_sum"
        addends = [node.input[0], node.input[1]] + ([node.input[4]] if len(node.input) > 4 and node.input[4] else [])
        gamma, beta = node.input[2], node.input[3] if len(node.input) > 3 else ""
        nodes.append(onnx.helper.make_node("Sum", addends, [summed], name=f"{node.name}_sum"))
        nodes.append(onnx.helper.make_node("LayerNormalization", [summed, gamma] + ([beta] if beta else []),
                                           [node.output[0]], name=f"{node.name}_layernorm", axis=-1, epsilon=eps))
        split += 1
    if not split:
        return {"applied": False, "reason": "no SkipLayerNormalization to split"}
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dest))
    return {"applied": True, "split": split}
