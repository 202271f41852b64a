"""The last layer's position-wise tail computed for the pooled token only.

A sequence classifier that pools the first token (BERT's pooler, RoBERTa's
and DistilBERT's heads: ``hidden[:, 0]``) throws away every other position of
the last layer's output. Attention mixes positions, but what follows it in the
last layer does not: the output projection, the residual + LayerNorm, the
feed-forward block and its LayerNorm act on each position alone. Slicing the
inputs of that tail to position 0 gives the same logits with the tail's work
divided by the sequence length: for MiniLM-L6 at 26 tokens about 12 % of the
model's multiply-adds.

The rewrite is found in the graph, not looked up per family: from a
``Gather(axis=1, index 0)`` (or ``Slice 0:1`` on axis 1) walk back through
ops that act per position, taking a node only when everything that reads its
outputs is already taken; the tensors that enter that region from outside
(the attention output, the previous layer's output) get ``Slice 0:1`` on
axis 1. The caller checks the result against the original graph on real
inputs (quantize.checked_rewrite) and drops it if it does not match.

The last layer's attention itself still needs every position's keys and
values, but only position 0's query: ``first_token_query`` then splits that
layer's fused ``Attention`` (one QKV projection for every position) into a
query projection of position 0, a key/value projection of every position and
``MultiHeadAttention`` with one query, so the scores, softmax and weighted sum
are computed for one row instead of one per position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .deps import require

#: ops that act on each position of a [batch, sequence, hidden] tensor alone (contrib ops included)
POSITION_WISE = frozenset({
    "MatMul", "Add", "Sum", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh", "Relu", "Sigmoid", "Gelu", "FastGelu",
    "BiasGelu", "QuickGelu", "Cast", "Identity", "LayerNormalization", "SkipLayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "ReduceMean"})
#: name prefix of the Slices that cut the tail's inputs (first_token_query finds them by it)
_CUT = "first_token_slice_"
#: ops whose ``axis`` must be the last one to act per position
_LAST_AXIS = {"LayerNormalization", "SimplifiedLayerNormalization"}


def slice_first_token(path: str | Path, dest: str | Path) -> dict:
    """Write ``dest``: ``path`` with the last layer's position-wise tail on position 0 only.

    Returns ``{"applied": bool, "nodes": tail nodes, "sliced": tensors cut}`` or
    ``{"applied": False, "reason": ...}``.
    """
    onnx = require("onnx")
    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    readers, producer = _links(graph)
    outputs = {o.name for o in graph.output}

    picks = [n for n in graph.node if _selects_first(n, consts, onnx)]
    if not picks:
        return {"applied": False, "reason": "no Gather/Slice of position 0 on axis 1"}
    nodes = []
    for pick in picks:  # the first whose input is computed per position (a pooler), not e.g. a mask
        nodes = _tail(pick, producer, readers, outputs, consts, onnx)
        if any(n.op_type == "MatMul" or "LayerNorm" in n.op_type for n in nodes):
            break
    else:
        return {"applied": False, "reason": "no per-position work between the attention and the pooled token"}
    tail = {id(n) for n in nodes}
    cut = sorted({i for n in nodes for i in n.input if i and i not in consts and id(producer.get(i)) not in tail})
    starts, ends, axes = "first_token_starts", "first_token_ends", "first_token_axes"
    for name, value in ((starts, 0), (ends, 1), (axes, 1)):
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([value], np.int64), name))
    renamed = {name: f"{name}_first_token" for name in cut}
    for node in nodes:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    ordered, placed = [], set()
    for node in graph.node:  # each Slice goes just before the first tail node that reads it
        for i, name in enumerate(cut):
            if renamed[name] in node.input and name not in placed:
                placed.add(name)
                ordered.append(onnx.helper.make_node("Slice", [name, starts, ends, axes], [renamed[name]],
                                                     name=f"{_CUT}{i}"))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    _one_position(graph, {o for n in nodes for o in n.output}, renamed)
    onnx.save(model, str(dest))
    return {"applied": True, "nodes": len(nodes), "sliced": cut}


#: attributes of a fused Attention that MultiHeadAttention carries over unchanged
_MHA_ATTRS = {"num_heads", "scale", "mask_filter_value"}


def first_token_query(path: str | Path, dest: str | Path) -> dict:
    """Write ``dest``: ``path`` (after ``slice_first_token``) with the last layer's Attention computing position 0's
    query only (see the module's text).

    Applies where a ``Slice 0:1`` of that rewrite is the only reader of a plain fused ``Attention`` (input, packed
    QKV weight and bias, a 2-D padding mask; no past, no attention bias, no unidirectional or rotary attributes).
    Returns ``{"applied": True, "attention": node name, "heads": N}`` or ``{"applied": False, "reason": ...}``.
    """
    onnx = require("onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    cuts = [n for n in graph.node if n.op_type == "Slice" and n.name.startswith(_CUT)]
    if not cuts:
        return {"applied": False, "reason": "no first-token tail (slice_first_token not applied)"}
    readers, producer = _links(graph)
    found, why = None, "no fused Attention feeds the first-token tail"
    for cut in cuts:
        att = producer.get(cut.input[0])
        if att is None or att.op_type != "Attention" or att.domain != "com.microsoft":
            continue
        why = _plain_attention(att, readers, producer, consts, graph)
        if why is None:
            found = (att, cut)
            break
    if found is None:
        return {"applied": False, "reason": why}
    att, cut = found
    weight, bias = (numpy_helper.to_array(consts[n]) for n in att.input[1:3])
    hidden = weight.shape[1] // 3
    x, mask, base = att.input[0], att.input[3], att.output[0]
    names = {k: f"{base}_query_{k}"
             for k in ("x", "wq", "bq", "wkv", "bkv", "qmm", "q", "kvmm", "kv", "k", "v", "split")}
    for key, value in (("wq", weight[:, :hidden]), ("bq", bias[:hidden]), ("wkv", weight[:, hidden:]),
                       ("bkv", bias[hidden:]), ("split", np.array([hidden, hidden], np.int64))):
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), names[key]))
    attrs = {a.name: helper.get_attribute_value(a) for a in att.attribute}
    # position 0 of the attention's input: the tail's own cut of the residual when it has one; it moves up to here
    # only when it came later (its readers all come after it, so after here too); x and the mask precede ``att``
    position = {id(n): k for k, n in enumerate(graph.node)}
    shared = next((c for c in cuts if c.input[0] == x), None)
    moved = shared is not None and position[id(shared)] > position[id(cut)]
    first = shared or helper.make_node("Slice", [x, *cut.input[1:4]], [names["x"]], name=f"{base}_query_slice")
    names["x"] = first.output[0]
    new = [first] if shared is None or moved else []
    new += [helper.make_node("MatMul", [names["x"], names["wq"]], [names["qmm"]], name=f"{base}_query_MatMul"),
            helper.make_node("Add", [names["qmm"], names["bq"]], [names["q"]], name=f"{base}_query_Add"),
            helper.make_node("MatMul", [x, names["wkv"]], [names["kvmm"]], name=f"{base}_key_value_MatMul"),
            helper.make_node("Add", [names["kvmm"], names["bkv"]], [names["kv"]], name=f"{base}_key_value_Add"),
            helper.make_node("Split", [names["kv"], names["split"]], [names["k"], names["v"]], axis=-1,
                             name=f"{base}_key_value_Split"),  # sizes as an input: opset 13 and later alike
            helper.make_node("MultiHeadAttention", [names["q"], names["k"], names["v"], "", mask], [cut.output[0]],
                             domain="com.microsoft", name=f"{base}_query_MultiHeadAttention", **attrs)]
    ordered = []
    for node in graph.node:
        if node is cut:
            ordered.extend(new)
        elif node is not att and not (moved and node is shared):
            ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    used = {i for n in graph.node for i in n.input} | {i.name for i in graph.input}
    for init in [t for t in graph.initializer if t.name in att.input[1:3] and t.name not in used]:
        graph.initializer.remove(init)
    for info in [v for v in graph.value_info if v.name == base]:
        graph.value_info.remove(info)
    onnx.save(model, str(dest))
    return {"applied": True, "attention": att.name or base, "heads": int(attrs["num_heads"])}


def _plain_attention(att, readers: dict, producer: dict, consts: dict, graph) -> str | None:
    """None when ``att`` can become a one-query MultiHeadAttention, else why not."""
    extra = sorted({a.name for a in att.attribute} - _MHA_ATTRS)
    if extra:
        return f"Attention {att.name!r} has {', '.join(extra)}"
    if len(att.input) < 4 or not att.input[3] or any(att.input[4:]) or len(att.output) > 1:
        return f"Attention {att.name!r} is not (input, weights, bias, mask) -> output"
    if len(readers.get(att.output[0], [])) != 1 or att.output[0] in {o.name for o in graph.output}:
        return f"Attention {att.name!r}'s output is read outside the first-token tail"
    weight, bias = consts.get(att.input[1]), consts.get(att.input[2])
    if weight is None or bias is None or len(weight.dims) != 2 or weight.dims[1] % 3 or bias.dims != [weight.dims[1]]:
        return f"Attention {att.name!r} has no constant packed QKV weight and bias"
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info]}
    mask = att.input[3]
    while mask not in ranks and mask in producer and producer[mask].op_type in ("Cast", "Identity"):
        mask = producer[mask].input[0]  # the exported graph casts the model's int64 mask to int32
    if ranks.get(mask) != 2:
        return f"Attention {att.name!r}'s mask is not a recorded 2-D padding mask"
    return None


def _links(graph) -> tuple[dict[str, list], dict]:
    """Tensor name -> the nodes that read it, and tensor name -> the node that writes it."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers, {o: n for n in graph.node for o in n.output}


def _tail(pick, producer: dict, readers: dict, outputs: set[str], consts: dict, onnx) -> list:
    """Nodes before ``pick`` that act per position and whose outputs only the tail (or ``pick``) reads."""
    members, tail = {id(pick)}, []
    frontier = [pick.input[0]]
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or id(node) in members or not _acts_per_position(node, consts, onnx):
            continue
        if any(o in outputs for o in node.output):
            continue
        if not all(id(r) in members for o in node.output for r in readers.get(o, [])):
            continue  # something outside the tail still reads it: the cut goes on its output
        members.add(id(node))
        tail.append(node)
        frontier.extend(i for i in node.input if i and i not in consts)
    return tail


def _one_position(graph, changed: set[str], renamed: dict[str, str]) -> None:
    """Recorded shapes of the tail's tensors say position axis 1 (ONNX Runtime plans memory by them, its
    quantizer types tensors by them): 1 now. The sliced inputs get the shapes of their sources, with 1 there."""
    by_name = {v.name: v for v in graph.value_info}
    for name, new in renamed.items():
        if name in by_name:
            copy = graph.value_info.add()
            copy.CopyFrom(by_name[name])
            copy.name = new
            changed.add(new)
    for info in graph.value_info:
        dims = info.type.tensor_type.shape.dim
        if info.name in changed and len(dims) >= 2:
            dims[1].Clear()
            dims[1].dim_value = 1


def _int_values(tensor, onnx) -> list[int] | None:
    if tensor is None:
        return None
    value = onnx.numpy_helper.to_array(tensor)
    return [int(v) for v in value.reshape(-1)] if value.dtype.kind in "iu" else None


def _attr(node, name: str, default=None):
    return next((a.i for a in node.attribute if a.name == name), default)


def _selects_first(node, consts: dict, onnx) -> bool:
    """Gather(axis=1) of the scalar index 0, or Slice 0:1 on axis 1."""
    if node.op_type == "Gather" and _attr(node, "axis", 0) == 1 and len(node.input) == 2:
        index = consts.get(node.input[1])
        return index is not None and len(index.dims) == 0 and _int_values(index, onnx) == [0]
    if node.op_type == "Slice" and len(node.input) >= 4:
        values = [_int_values(consts.get(n), onnx) for n in node.input[1:4]]
        step = _int_values(consts.get(node.input[4]), onnx) if len(node.input) > 4 and node.input[4] else [1]
        return values == [[0], [1], [1]] and step == [1]
    return False


def _acts_per_position(node, consts: dict, onnx) -> bool:
    """True when the node's output at a position reads only that position of its non-constant inputs."""
    if node.op_type not in POSITION_WISE or node.domain not in ("", "ai.onnx", "com.microsoft"):
        return False
    if node.op_type == "ReduceMean":  # axes: an attribute before opset 18, an input since
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if axes is None and len(node.input) > 1:
            axes = _int_values(consts.get(node.input[1]), onnx)
        return axes == [-1] and _attr(node, "keepdims", 1) == 1
    if node.op_type in _LAST_AXIS:
        return _attr(node, "axis", -1) == -1
    if node.op_type == "MatMul":
        weight = consts.get(node.input[1])
        return weight is not None and len(weight.dims) == 2
    # elementwise: constants must broadcast along the hidden axis only (rank <= 1, or leading dims all 1)
    for name in node.input:
        const = consts.get(name)
        if const is not None and any(d != 1 for d in list(const.dims)[:-1]):
            return False
    return True
