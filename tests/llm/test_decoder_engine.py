"""TensorRT-RTX decoder engines for a tiny random Llama: the fp16 / int4 decoder ONNX on ONNX Runtime CPU against
PyTorch, real tensorrt_rtx builds for two compute capabilities with prefill/decode profiles, the precision proof,
and one-line errors. Building needs no GPU; running the engine does (skipped here without one)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import PROMPTS, build_tiny_lm  # noqa: E402

pytest.importorskip("torch", reason="toolchain extra (torch) not installed")
pytest.importorskip("transformers", reason="toolchain extra (transformers) not installed")

BLOCK = 128  # the default of edgekit build / optimize (onnxruntime-genai's TRT-RTX default too)
CCS = ["8.6", "12.0"]
PROMPT = [5, 9, 12, 7, 30, 11]
INT4_PROMPT = [9, 12, 7, 30, 11, 6]
FP16_LOGIT_TOL = 5e-2
INT4_LOGIT_TOL = 0.5  # int4 graph vs PyTorch with the same (fake-quantized) weights, on ORT CPU  # fp16 weights and compute vs fp32 PyTorch (measured ~2e-3 on this model)


def _fake_quantized_llama(folder: Path) -> Path:
    """A tiny Llama whose Linear weights already sit on the int4 grid the ONNX uses: int4 must then equal PyTorch."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekit.llm.rtx_graph import dequantize_blocks, quantize_blocks

    build_tiny_lm(folder, "llama", hidden=256)  # weights large enough that int4 visibly shrinks the engine
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight.numpy().T.astype(np.float32)  # ONNX MatMul layout [in, out]
                # round-to-nearest grid: the graph's scale search then finds the same scales (ratio 1.0, error ~0)
                q, scale = quantize_blocks(w, BLOCK, search=False)
                module.weight.copy_(torch.from_numpy(dequantize_blocks(q, scale, BLOCK).T.copy()))
        # an outlier activation like SmolLM2's (hidden ~25000): mean(x^2) of token 5 is ~1e5 > fp16's 65504, so the
        # RMSNorm variance must stay fp32 end to end (regression: the converter's fp16 round trips overflowed it)
        model.model.embed_tokens.weight[5, 0] = 5000.0
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return _fake_quantized_llama(tmp_path_factory.mktemp("rtx") / "llama")


@pytest.fixture(scope="module")
def onnx_dirs(src, tmp_path_factory) -> dict:
    from edgekit.llm.rtx_onnx import RtxOnnxOptions, prepare_rtx_onnx

    root = tmp_path_factory.mktemp("rtx-onnx")
    options = {p: RtxOnnxOptions(precision=p, block_size=BLOCK, prompts=tuple(PROMPTS), validation_tokens=8)
               for p in ("fp16", "int4")}
    fp16 = prepare_rtx_onnx(src, root / "fp16", options["fp16"]).path
    int4 = prepare_rtx_onnx(fp16, root / "int4", options["int4"]).path  # quantized from the fp16 ONNX: no export
    return {"fp16": fp16, "int4": int4}


def _torch_reference(src: Path, prompt: list[int] = PROMPT) -> tuple[list[int], list[np.ndarray]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=2)
    return out.sequences[0, len(prompt):].tolist(), [lg[0].numpy() for lg in out.logits]


def _graph(folder: Path):
    import onnx

    return onnx.load(str(folder / "model.onnx"), load_external_data=False)


def test_fp16_onnx_matches_pytorch_on_ort_cpu(src, onnx_dirs):
    from edgekit.llm.loop import DecoderSession, greedy

    folder = onnx_dirs["fp16"]
    g = _graph(folder)
    assert {o.domain for o in g.opset_import} <= {"", "ai.onnx"} and g.opset_import[0].version >= 21
    types = {i.name: i.type.tensor_type.elem_type for i in (*g.graph.input, *g.graph.output)}
    assert types["past_key_values.0.key"] == 10 and types["present.1.value"] == 10 and types["logits"] == 1
    assert any(t.data_type == 10 and len(t.dims) == 2 for t in g.graph.initializer)  # fp16 weights
    expected, ref_logits = _torch_reference(src)
    got = greedy(DecoderSession(folder / "model.onnx"), PROMPT, 8, keep_logits=True)
    assert got.tokens == expected
    assert max(float(np.abs(a - b).max()) for a, b in zip(got.logits, ref_logits)) < FP16_LOGIT_TOL
    v = __import__("json").loads((folder / "manifest.json").read_text())["validation"]
    assert v["identical_sequences"] == 1.0 and v["max_abs_logit_diff_on_common_prefix"] < FP16_LOGIT_TOL


def test_int4_onnx_is_block_dq_and_matches_pytorch(src, onnx_dirs):
    import onnx

    from edgekit.llm.loop import DecoderSession

    g = _graph(onnx_dirs["int4"])
    dqs = [n for n in g.graph.node if n.op_type == "DequantizeLinear"]
    inits = {t.name: t for t in g.graph.initializer}
    assert len(dqs) == 15  # 2 layers x (q, k, v, o, gate, up, down) + lm_head
    for n in dqs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {"axis": 0, "block_size": BLOCK} and len(n.input) == 2  # symmetric: no zero point
        assert inits[n.input[0]].data_type == onnx.TensorProto.INT4 and inits[n.input[1]].data_type == 10
    # same weights as PyTorch, but ORT CPU's int4 kernels round differently from fp32 (measured <= 0.2 logits, vs
    # 0.006 for the fp16 graph), which flips near-ties: compare teacher-forced logits along PyTorch's 8 tokens
    expected, ref_logits = _torch_reference(src, INT4_PROMPT)
    seq = np.asarray([INT4_PROMPT + expected])
    dec = DecoderSession(onnx_dirs["int4"] / "model.onnx")
    logits = dec.forward(seq, np.ones_like(seq), dec.empty_cache(1))[0][0, len(INT4_PROMPT) - 1:-1]
    assert float(np.abs(logits - np.stack(ref_logits)).max()) < INT4_LOGIT_TOL
    assert (logits.argmax(-1) == np.asarray(expected)).sum() >= 7
    size = {p: sum(f.stat().st_size for f in d.glob("model.onnx*")) for p, d in onnx_dirs.items()}
    assert size["int4"] < 0.6 * size["fp16"]
    m = __import__("json").loads((onnx_dirs["int4"] / "manifest.json").read_text())
    assert m["inputs"]["derived_from"] == str(onnx_dirs["fp16"]) and m["rtx"]["int4"]["quantized_matmuls"] == 15


def test_int4_keep_sensitive_leaves_the_worst_matmuls_fp16(onnx_dirs):
    import onnx

    from edgekit.llm.rtx_graph import quantize_int4

    model = onnx.load(str(onnx_dirs["fp16"] / "model.onnx"))
    info = quantize_int4(model, BLOCK, keep_sensitive=2)
    sensitive = [k for k in info["kept_fp16"] if k["why"].startswith("sensitive")]
    assert info["quantized_matmuls"] == 13 and len(sensitive) == 2
    assert len([n for n in model.graph.node if n.op_type == "DequantizeLinear"]) == 13
    worst = min(float(k["why"].split()[-3]) for k in sensitive)
    assert worst >= info["relative_output_error"]["mean"]


def test_int4_keep_weights_leaves_the_named_modules_fp16(onnx_dirs):
    """The AWQ fit's unrounded linears, by module name: layers.1 is not layers.11's prefix, a tied head is not."""
    import onnx

    from edgekit.llm.rtx_graph import _named, quantize_int4

    assert _named(["model.model.layers.1.mlp.down_proj.weight"], ("model.layers.1.mlp.down_proj",))
    assert not _named(["model.model.layers.11.mlp.down_proj.weight"], ("model.layers.1.mlp.down_proj",))
    model = onnx.load(str(onnx_dirs["fp16"] / "model.onnx"))
    keep = ("model.layers.1.mlp.down_proj", "model.layers.0.self_attn.v_proj")
    info = quantize_int4(model, BLOCK, keep_weights=keep)
    kept = sorted(k["module"] for k in info["kept_fp16"] if "module" in k)
    assert info["quantized_matmuls"] == 13 and kept == ["model.model.layers.0.self_attn.v_proj",
                                                        "model.model.layers.1.mlp.down_proj"]
    fp16 = [n for n in model.graph.node if n.op_type == "MatMul" and n.name in {k["node"] for k in info["kept_fp16"]}]
    assert len(fp16) == 2 and not any("DequantizeLinear" in i for n in fp16 for i in n.input)
    assert info["keep_weights_not_found"] == []
    absent = ("model.layers.7.mlp.up_proj",)  # a 2-layer model: said, not silently rounded
    again = quantize_int4(onnx.load(str(onnx_dirs["fp16"] / "model.onnx")), BLOCK, keep_weights=absent)
    assert again["keep_weights_not_found"] == list(absent) and again["quantized_matmuls"] == 15


def test_int4_packing_reads_back_through_onnx():
    import onnx

    from edgekit.llm.rtx_graph import pack_int4, quantize_blocks

    w = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    q, scale = quantize_blocks(w, 32)
    qt, st = pack_int4("w", q, scale)
    assert np.array_equal(onnx.numpy_helper.to_array(qt).astype(np.int8), q)
    assert q.min() >= -8 and q.max() <= 7 and st.dims == [2, 6]


def test_int4_scale_search_lowers_the_error_of_round_to_nearest():
    from edgekit.llm.rtx_graph import dequantize_blocks, quantize_blocks

    rng = np.random.default_rng(1)
    w = rng.standard_t(4, size=(256, 48)).astype(np.float32)  # heavy tails: a block's amax is an outlier
    err = {s: np.square(dequantize_blocks(*quantize_blocks(w, 32, search=s), 32) - w).sum(axis=0) for s in (False, True)}
    assert (err[True] <= err[False] + 1e-6).all()  # per column: never worse (round to nearest is a candidate)
    assert err[True].sum() < 0.9 * err[False].sum()
    q, _ = quantize_blocks(w, 32)
    assert q.min() >= -8 and q.max() <= 7


def test_int4_importance_weights_the_error_toward_loud_input_channels():
    from edgekit.llm.rtx_graph import dequantize_blocks, quantize_blocks

    rng = np.random.default_rng(2)
    w = rng.standard_t(4, size=(128, 32)).astype(np.float32)
    loud = np.ones(128, np.float32)
    loud[::16] = 1e4  # one input channel per half block runs 100x larger (SmolLM2-like outlier channels)

    def output_error(q_scale):
        return float((loud[:, None] * np.square(dequantize_blocks(*q_scale, 32) - w)).sum())

    assert output_error(quantize_blocks(w, 32, importance=loud)) < 0.9 * output_error(quantize_blocks(w, 32))


def _check_engine(folder: Path, precision: str) -> dict:
    import json

    m = json.loads((folder / "model.engine.json").read_text())
    assert (folder / "model.engine").stat().st_size == m["engine_bytes"] > 0
    assert m["backend"] == "tensorrt-rtx" and m["precision"] == precision and m["compute_capabilities"] == CCS
    prefill, decode = m["profiles"]
    assert prefill["name"] == "prefill" and prefill["past"] == [0, 0, 0] and prefill["sequence"][0] == 1
    assert decode["sequence"] == [1, 1, 1] and decode["past"][0] == 1 and decode["past"][2] == 127
    assert decode["shapes"]["attention_mask"][2] == [1, 128]
    mm = m["network"]["matmul"]
    assert mm["not_fp16"] == [] and mm["outputs"] == {"HALF": mm["total"]}
    assert m["verification"]["network"] == "passed" and m["onnx_bytes"] > 0
    return m


def test_engines_for_two_compute_capabilities(onnx_dirs, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed: engine builds untested")
    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.llm.rtx_engine import LMEngineOptions, build_lm_engine

    fp16 = build_lm_engine(onnx_dirs["fp16"], tmp_path / "fp16", LMEngineOptions(
        precision="fp16", compute_capabilities=CCS, max_context=128, max_prompt=64)).path
    r = CliRunner().invoke(main, ["build", str(onnx_dirs["int4"]), "--out", str(tmp_path / "int4"), "--precision",
                                  "int4", "--compute-capability", ",".join(CCS), "--max-seq", "128", "--max-prompt",
                                  "64"])
    assert r.exit_code == 0, r.output
    assert "15 weights int4" in r.output and "profiles prefill seq 1/64/64" in r.output
    f, q = _check_engine(fp16, "fp16"), _check_engine(tmp_path / "int4", "int4")
    assert f["network"]["matmul"]["int4_weight"] == 0 and f["network"]["matmul"]["fp16_weight"] == 15
    assert q["network"]["matmul"]["int4_weight"] == 15 and q["network"]["matmul"]["weights"]["dequantize:INT4"] == 15
    assert q["engine_bytes"] < f["engine_bytes"]
    assert {"model.onnx", "tokenizer.json", "manifest.json", "config.json"} <= {p.name for p in fp16.iterdir()}
    _runs_or_refuses(tmp_path / "int4")


def _runs_or_refuses(folder: Path) -> None:
    """With a GPU of a built-for compute capability: engine tokens == the ONNX's on ORT. Without: one-line error."""
    from edgekit.errors import BackendError
    from edgekit.runtime.generate import load_generator
    from edgekit.runtime.trt import cuda_devices

    gpus, _ = cuda_devices()
    if not gpus:
        with pytest.raises(BackendError) as err:
            load_generator(folder)
        assert "No CUDA GPU" in str(err.value) and "engine='ort'" in str(err.value) and "\n" not in str(err.value)
        return
    if gpus[0]["compute_capability"] not in CCS:
        pytest.skip(f"GPU {gpus[0]['name']} is compute capability {gpus[0]['compute_capability']}, not {CCS}")
    trt_gen, ort_gen = load_generator(folder), load_generator(folder, engine="ort")
    assert trt_gen.engine_name == "tensorrt-rtx"
    assert trt_gen.generate_ids(PROMPT, 8) == ort_gen.generate_ids(PROMPT, 8)


def _one_line_error(args: list[str]) -> str:
    from click.testing import CliRunner

    from edgekit.cli import main

    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in r.output
    return lines[0]


def test_one_line_errors(onnx_dirs, tiny_onnx, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed")
    int4 = str(onnx_dirs["int4"])
    assert "not a causal-LM artifact" in _one_line_error(["build", str(tiny_onnx), "--out", str(tmp_path / "a"),
                                                          "--precision", "int4"])
    line = _one_line_error(["build", int4, "--out", str(tmp_path / "b"), "--compute-capability", "9.0"])
    assert "Unknown compute capability '9.0'" in line and "12.0" in line
    assert "not offered" in _one_line_error(["build", int4, "--out", str(tmp_path / "c"), "--precision", "fp32"])
    assert "Invalid lengths" in _one_line_error(["build", int4, "--out", str(tmp_path / "d"), "--max-prompt", "512",
                                                 "--max-seq", "128"])
    # its model.onnx alone was built as an encoder and failed on the KV-cache axes with a fix about static sizes
    line = _one_line_error(["build", str(onnx_dirs["fp16"] / "model.onnx"), "--out", str(tmp_path / "e")])
    assert "is the decoder ONNX of the causal-LM folder" in line and f"edgekit build {onnx_dirs['fp16']}" in line
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_engine_without_gpu_is_one_line(onnx_dirs, tmp_path):
    from edgekit.errors import BackendError
    from edgekit.runtime.generate import load_generator
    from edgekit.runtime.trt import cuda_devices

    if cuda_devices()[0]:
        pytest.skip("a GPU is present: the refusal without one cannot be shown here")
    folder = tmp_path / "copy"
    shutil.copytree(onnx_dirs["fp16"], folder)
    (folder / "model.engine").write_bytes(b"not an engine")  # never read: the GPU check comes first
    with pytest.raises(BackendError, match="No CUDA GPU found for the TensorRT-RTX decoder engine"):
        load_generator(folder)
    assert load_generator(folder, engine="ort").engine_name == "ort"


def test_optimize_target_tensorrt_rtx_gates_the_engine_onnx(src, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed")
    import json

    from click.testing import CliRunner

    from edgekit.cli import main

    data = tmp_path / "dev.tsv"
    data.write_text("label\tsentence\n1\tthe film was great\n0\tthe plot was dull\n1\tgood fun\n0\tbad movie\n")
    (tmp_path / "train.tsv").write_text("label\tsentence\n" + "1\tthe film was great and the plot was fun\n" * 20)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["optimize", str(src), "--data", str(data), "--out", str(out), "--target",
                                  "tensorrt-rtx", "--compute-capability", "8.6", "--max-samples", "4"])
    # the tiny random model's int4 may miss the agreement budget (it did with the -8 grid: 0.67): exit 3 then,
    # the engine and its report written all the same; accuracy and perplexity are what this route must keep
    assert r.exit_code in (0, 3), r.output
    report = json.loads((out / "report.json").read_text())
    opt = report["optimized"]
    assert opt["backend"] == "tensorrt-rtx" and opt["precision"] == "int4" and opt["compute_capabilities"] == ["8.6"]
    assert opt["int4_weight_matmuls"] == 15 and opt["engine_mb"] > 0
    failed = {c["name"] for c in report["llm"]["gate"]["checks"] if not c["passed"]}
    assert failed <= {"greedy_agreement"} and report["passed"] == (r.exit_code == 0)
    assert opt["latency"].startswith("not measured") and report["llm"]["bench"] is None
    assert report["llm"]["awq"]["grid"] == "trt" and report["llm"]["awq"]["method"].startswith("awq scales + gptq")
    assert (out / "model.engine").is_file() and (out / "model.onnx").is_file()
    assert r.exit_code == 3 or ("TensorRT-RTX engine" in r.output and "latency not measured" in r.output)


def test_optimize_lm_keep_sensitive_fits_around_the_kept_matmuls(src, tmp_path):
    """``optimize-lm --target tensorrt-rtx --keep-sensitive 2``: the AWQ fit leaves its two most sensitive linears
    unrounded and the engine's ONNX has exactly those MatMuls in fp16; on the CPU it is a one-line error."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed")
    import json

    from click.testing import CliRunner

    from edgekit.cli import main

    data = tmp_path / "dev.tsv"
    data.write_text("label\tsentence\n1\tthe film was great\n0\tthe plot was dull\n1\tgood fun\n0\tbad movie\n")
    (tmp_path / "train.tsv").write_text("label\tsentence\n" + "1\tthe film was great and the plot was fun\n" * 20)
    args = ["optimize-lm", str(src), "--data", str(data), "--rows", "4", "--answer-tokens", "4", "--skip-bench",
            "--threads", "1", "--keep-sensitive", "2"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cpu")])
    assert r.exit_code == 1 and "--keep-sensitive applies to --target tensorrt-rtx" in r.output
    assert not (tmp_path / "cpu").exists()
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [*args, "--out", str(out), "--target", "tensorrt-rtx", "--compute-capability", "8.6",
                                  "--max-accuracy-drop", "100", "--min-agreement", "0", "--max-ppl-increase", "100"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    kept = report["llm"]["awq"]["kept_unrounded"]
    manifest = json.loads((out / "manifest.json").read_text())
    rtx = next(step["rtx"] for step in manifest["lineage"] if "rtx" in step)  # the int4 ONNX's record
    fp16 = [k["module"] for k in rtx["int4"]["kept_fp16"] if "module" in k]
    assert len(kept) == 2 and sorted(m.removeprefix("model.") for m in fp16) == sorted(kept)
    assert report["optimized"]["int4_weight_matmuls"] == 13
    assert rtx["int4"]["relative_output_error"]["max"] < 1e-6  # the Q/DQ rewrite returned the fitted codes
