"""edgekit build on the tiny model and onnx.helper graphs: TensorRT-RTX engines (no GPU needed), sidecars,
precision verified on the parsed network, profiles from data, and every bad input as one line, exit 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cpuinfo_flags

from edgekit.deps import available
from edgekit.errors import BackendError, InputError, MissingDependencyError, ModelError

HAVE_RTX = available("tensorrt_rtx")
HAVE_TRT = available("tensorrt")


def _gpus():
    from edgekit.runtime.trt import cuda_devices

    return cuda_devices()[0]


def needs_rtx(test):
    """TensorRT-RTX builds without a GPU; skip with a reason where the module is absent."""
    test = pytest.mark.tensorrt_rtx(test)
    return pytest.mark.skipif(not HAVE_RTX, reason="tensorrt_rtx not installed (pip install 'edgekit[rtx]')")(test)


CCS = ["8.6", "12.0"]


@pytest.fixture(scope="module")
def tiny_qdq(tiny_onnx, tiny_data, tmp_path_factory):
    """The tiny ONNX quantized for TensorRT: symmetric S8S8 Q/DQ calibrated on the tiny data."""
    from edgekit.quantize import QuantizeOptions, quantize

    out = tmp_path_factory.mktemp("qdq") / "trt"
    return quantize(tiny_onnx, out, QuantizeOptions(target="tensorrt", calibration_samples=16),
                    calibration_data=tiny_data).path


def options(**kw):
    from edgekit.engine import BuildOptions

    return BuildOptions(**{"compute_capabilities": CCS, **kw})


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def helper_model(path: Path, nodes, inits, inputs, outputs, opset=17, extra_opsets=()):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def matmul_graph(path: Path, qdq_on_relu_only=False, fp16_cast=False):
    """x[n,s,8] -> MatMul(W) -> Relu -> y. Variants: Q/DQ that skips the MatMul; an fp16 cast beside it."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "s", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "s", 8])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm")]
    inits = [w]
    if qdq_on_relu_only:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"], name="q"),
                  helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["hd"], name="dq"),
                  helper.make_node("Relu", ["hd"], ["y"], name="relu")]
    elif fp16_cast:
        nodes += [helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16, name="c16"),
                  helper.make_node("Cast", ["h16"], ["h32"], to=TensorProto.FLOAT, name="c32"),
                  helper.make_node("Relu", ["h32"], ["y"], name="relu")]
    else:
        nodes += [helper.make_node("Relu", ["h"], ["y"], name="relu")]
    return helper_model(path, nodes, inits, [x], [y])


# --- builds on the tiny BERT: three precisions, two compute capabilities, sidecar ---------------------------------

@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_writes_engine_and_sidecar(precision, tiny_onnx, tiny_qdq, tiny_data, tmp_path):
    from edgekit.artifact import sha256_file
    from edgekit.engine import build

    src = tiny_qdq if precision == "int8" else tiny_onnx
    art = build(src, tmp_path / "e" / "model.engine", options(precision=precision), data=tiny_data)
    engine = tmp_path / "e" / "model.engine"
    side = json.loads((tmp_path / "e" / "model.engine.json").read_text())
    assert art.kind == "engine" and art.path == engine and side == art.manifest
    assert side["backend"] == "tensorrt-rtx" and side["backend_version"].startswith("1.")
    assert side["precision"] == precision and side["compute_capabilities"] == CCS
    assert side["engine_bytes"] == engine.stat().st_size > 100_000
    assert side["engine_sha256"] == sha256_file(engine)
    assert side["onnx"]["sha256"] == sha256_file(src / "model.onnx") and side["build_seconds"] > 0
    prof = side["profiles"][0]
    assert prof["batch"] == [1, 8, 32] and prof["source"]["sequence"] == "data"
    assert 1 == prof["sequence"][0] <= prof["sequence"][1] <= prof["sequence"][2] <= 128
    mm = side["network"]["matmul"]
    assert mm["total"] >= 12 and side["verification"]["network"] == "passed"
    assert {"fp32": mm["fp32"], "fp16": mm["fp16"], "int8": mm["int8"]}[precision] == mm["total"]
    assert "not run: no GPU" in side["verification"]["engine"] or _gpus()
    assert not [n for n in leftovers(engine.parent) if n.startswith(".")]  # no staging left behind
    assert (engine.parent / "tokenizer.json").is_file() and (engine.parent / "config.json").is_file()


@needs_rtx
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_converted_onnx_beside_engine_keeps_io_types(precision, tiny_onnx, tiny_qdq, tmp_path):
    import onnx

    from edgekit.engine import build

    art = build(tiny_qdq if precision == "int8" else tiny_onnx, tmp_path / "m.engine", options(precision=precision))
    written = tmp_path / f"m.{precision}.onnx"
    assert art.manifest["onnx"]["built_from"] == str(written) and written.is_file()
    model = onnx.load(str(written))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types["input_ids"] == onnx.TensorProto.INT64 and types["logits"] == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    kept = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert kept and art.manifest["onnx"]["conversion"]["kept_fp32_nodes"] == len(kept)
    # the fp16 ONNX still classifies like the fp32 one (ONNX Runtime, the tiny model's own logits)
    from edgekit.runtime.session import OrtSession
    from edgekit.runtime.tokenizer import TextEncoder

    feeds = TextEncoder(tiny_onnx)(["a gripping , funny film", "one long string of cliches ."])
    with OrtSession(tiny_onnx / "model.onnx") as ref, OrtSession(written) as got:
        a, b = ref.run(ref.feeds(feeds))["logits"], got.run(got.feeds(feeds))["logits"]
    assert b.dtype == np.float32 and np.abs(a - b).max() < (0.05 if precision == "fp16" else 0.5)


def test_profile_from_data_and_overrides(tiny_onnx, tiny_data):
    from edgekit.profiles import resolve_profile, token_length_stats

    stats = token_length_stats(tiny_onnx, tiny_data, None)
    p = resolve_profile(options(), tiny_onnx, tiny_data, None)
    assert p.seq[0] == 1 and p.seq[1] >= stats["p50"] and p.seq[2] >= stats["max"] and p.source["sequence"] == "data"
    p = resolve_profile(options(max_seq=64, opt_seq=16, max_batch=4, opt_batch=2), tiny_onnx, tiny_data, None)
    assert p.seq == (1, 16, 64) and p.batch == (1, 2, 4) and p.source["overridden"] == ["opt_seq", "max_seq"]
    p = resolve_profile(options(), tiny_onnx, None, None)
    assert p.seq == (1, 128, 128) and p.source["sequence"] == "defaults"  # the tiny model's limit is 128
    with pytest.raises(InputError, match="min <= opt <= max"):
        resolve_profile(options(min_seq=10, max_seq=5), tiny_onnx, None, None)


# --- precision verified on the parsed network (helper graphs) -----------------------------------------------------

@needs_rtx
@pytest.mark.parametrize("kind", ["int8", "fp16"])
def test_precision_not_applied_fails_or_warns(kind, tmp_path):
    from edgekit.engine import build

    src = matmul_graph(tmp_path / "m.onnx", qdq_on_relu_only=kind == "int8", fp16_cast=kind == "fp16")
    out = tmp_path / "out" / "m.engine"
    with pytest.raises(BackendError, match=f"precision {kind} was not applied") as err:
        build(src, out, options(precision=kind, min_seq=1, opt_seq=4, max_seq=8))
    assert "MatMul" in str(err.value) and "\n" not in str(err.value)
    assert leftovers(out.parent) == []
    art = build(src, out, options(precision=kind, min_seq=1, opt_seq=4, max_seq=8, allow_fallback=True))
    assert out.is_file() and any("precision fallback" in w for w in art.manifest["warnings"])


@needs_rtx
def test_int8_needs_qdq(tiny_onnx, tmp_path):
    from edgekit.engine import build

    with pytest.raises(InputError, match="quantize .* --target tensorrt"):
        build(tiny_onnx, tmp_path / "m.engine", options(precision="int8"))
    assert leftovers(tmp_path) == []


@needs_rtx
def test_walk_traces_dq_through_shuffles(tiny_qdq):
    import tensorrt_rtx

    from edgekit.inspect_network import parse, verify, walk
    from edgekit.precision import int8_matmul_nodes, load_onnx

    onnx_path = tiny_qdq / "model.onnx"
    _, network, _, _ = keep = parse(tensorrt_rtx, onnx_path, "TensorRT-RTX")
    summary = walk(network)
    intended = int8_matmul_nodes(load_onnx(onnx_path))
    by_name = {m["name"]: m for m in summary["matmuls"]}
    assert intended and all(by_name[n]["fed_by"] == ["DEQUANTIZE", "DEQUANTIZE"] for n in intended)
    assert verify(summary, "int8", intended) == [] and verify(summary, "int8", intended + ["ghost"])
    assert summary["quantize_layers"] > 0 and keep


# --- bad input: one line, nothing written ------------------------------------------------------------------------

@needs_rtx
def test_parser_rejects_op_names_node_and_op(tmp_path):
    from onnx import TensorProto, helper

    from edgekit.engine import build

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    src = helper_model(tmp_path / "custom.onnx", [helper.make_node("Relu", ["x"], ["h"], name="relu0"),
                                                  helper.make_node("FancyOp", ["h"], ["y"], name="my_fancy",
                                                                   domain="com.example")],
                       [], [x], [y], extra_opsets=[("com.example", 1)])
    with pytest.raises(ModelError) as err:
        build(src, tmp_path / "out" / "m.engine", options(precision="fp32"))
    assert "'my_fancy'" in str(err.value) and "FancyOp" in str(err.value) and "\n" not in str(err.value)
    assert leftovers(tmp_path / "out") == []


@needs_rtx
def test_compute_capabilities_normalized_and_validated():
    import tensorrt_rtx

    from edgekit.engine import compute_capabilities

    assert compute_capabilities(tensorrt_rtx, options(compute_capabilities=["86", "sm_89", "SM120", "8.6"])) == \
        ["8.6", "8.9", "12.0"]
    with pytest.raises(InputError, match=r"Choose from: 7\.5, 8\.0, 8\.6, 8\.9, 12\.0, 12\.1"):
        compute_capabilities(tensorrt_rtx, options(compute_capabilities=["8.7"]))
    with pytest.raises(InputError, match="Hopper"):
        compute_capabilities(tensorrt_rtx, options(compute_capabilities=["9.0"]))


@needs_rtx
def test_failed_build_and_existing_engine_leave_nothing_half_written(tiny_onnx, tmp_path):
    from edgekit.engine import build

    out = tmp_path / "m.engine"
    with pytest.raises(BackendError, match="Turing"):  # TensorRT-RTX has no fp32 GEMM for 7.5
        build(tiny_onnx, out, options(precision="fp32", compute_capabilities=["7.5"], max_seq=32))
    assert leftovers(tmp_path) == []
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="--force"):
        build(tiny_onnx, out, options(precision="fp32"))
    assert out.read_bytes() == b"old"


def test_classic_tensorrt_missing_names_the_gpu_extra(tiny_onnx, tmp_path):
    if HAVE_TRT:
        pytest.skip("tensorrt is installed here")
    from edgekit.engine import BuildOptions, build

    with pytest.raises(MissingDependencyError, match=r"edgekit\[gpu\]"):
        build(tiny_onnx, tmp_path / "m.engine", BuildOptions(backend="tensorrt"))
    with pytest.raises(InputError, match="TensorRT-RTX only"):
        build(tiny_onnx, tmp_path / "m.engine", BuildOptions(backend="tensorrt", compute_capabilities=["8.6"]))


@needs_rtx
def test_cli_bad_inputs_exit_1_with_one_line(tiny_onnx, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes((tiny_onnx / "model.onnx").read_bytes()[:2000])
    cases = {"corrupt": [corrupt, "--precision", "fp32"], "unknown cc": [tiny_onnx, "--compute-capability", "8.7"],
             "int8 without qdq": [tiny_onnx, "--precision", "int8"]}
    for name, args in cases.items():
        out = tmp_path / name.replace(" ", "_")
        r = subprocess.run([sys.executable, "-m", "edgekit", "build", *map(str, args), "--out", str(out / "m.engine")],
                           capture_output=True, text=True, timeout=120)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (name, r.stderr)
        assert leftovers(out) == []
    r = subprocess.run([sys.executable, "-m", "edgekit", "doctor", "--json"], capture_output=True, text=True,
                       timeout=60)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["backends"]["tensorrt-rtx"] and "tensorrt-rtx" not in report["backends_broken"]
    assert report["cpu"]["flags"]["avx512_vnni"] is ("avx512_vnni" in cpuinfo_flags())  # this CPU's truth
    assert report["gpus"] or report["gpu_note"].startswith("none")
    # installed, but its library does not load: doctor listed it as usable, then build failed
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "tensorrt_rtx.py").write_text('raise OSError("libtensorrt_rtx.so.1: cannot open shared object file")\n')
    r = subprocess.run([sys.executable, "-m", "edgekit", "doctor"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim),
                                                                                       os.environ.get("PYTHONPATH")]))})
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.strip().startswith("tensorrt-rtx"))
    assert "installed but fails to load: OSError: libtensorrt_rtx.so.1: cannot open shared object file" in row, r.stdout


# --- running engines: needs a GPU -------------------------------------------------------------------------------

def test_engine_session_without_gpu_says_so(tmp_path):
    if _gpus():
        pytest.skip("a CUDA GPU is present")
    from edgekit.runtime.trt import EngineSession, open_engine_session

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "model.engine.json").write_text(json.dumps({"backend": "tensorrt-rtx"}))
    with pytest.raises(BackendError, match="No CUDA GPU found"):
        EngineSession(engine).open()
    with pytest.raises(InputError, match="built with TensorRT-RTX"):
        open_engine_session(tmp_path, backend="tensorrt")
    with pytest.raises(BackendError, match="No CUDA GPU found"):
        open_engine_session(tmp_path, backend="tensorrt-rtx").open()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["tensorrt-rtx", "tensorrt"])
def test_engine_session_matches_onnxruntime_on_gpu(backend, tiny_onnx, tmp_path):
    if not _gpus():
        pytest.skip("no CUDA GPU on this machine")
    pytest.importorskip({"tensorrt-rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}[backend])
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    from edgekit.engine import BuildOptions, build
    from edgekit.runtime import load
    from edgekit.runtime.session import OrtSession

    build(tiny_onnx, tmp_path / "model.engine", BuildOptions(backend=backend, precision="fp32"))
    clf = load(tmp_path, backend=backend)
    texts = ["a gripping , funny film", "one long string of cliches ."]
    feeds = clf.encoder(texts)
    with OrtSession(tiny_onnx / "model.onnx") as ref:
        want = ref.run(ref.feeds(feeds))["logits"]
    got = clf.run(clf.session.feeds(feeds))["logits"]
    assert np.abs(got - want).max() < 1e-2
    assert clf.session.backend == backend and side_engine_inspected(tmp_path / "model.engine.json", backend)


def side_engine_inspected(sidecar: Path, backend: str) -> bool:
    info = json.loads(sidecar.read_text())["verification"]["engine"]
    return isinstance(info, dict) or backend == "tensorrt-rtx"


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_classic_tensorrt_fp16_build(tiny_onnx, tmp_path):
    pytest.importorskip("tensorrt", reason="classic TensorRT not installed (edgekit[gpu])")
    if not _gpus():
        pytest.skip("classic TensorRT builds on a GPU; none here")
    from edgekit.engine import BuildOptions, build

    cache = tmp_path / "timing.cache"
    art = build(tiny_onnx, tmp_path / "m.engine", BuildOptions(backend="tensorrt", precision="fp16",
                                                               timing_cache=str(cache)))
    assert art.manifest["network"]["matmul"]["fp16"] == art.manifest["network"]["matmul"]["total"]
    assert cache.is_file() and isinstance(art.manifest["verification"]["engine"], dict)


# --- the engine session's host side, on a fake CUDA runtime and engine (runs anywhere) --------------------------

class FakeCudart:
    """cuda.bindings.runtime's calls used by EngineSession, over host memory."""

    class cudaMemcpyKind:  # noqa: N801  (mirrors cuda-python's name)
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self):
        self.blocks, self.mallocs = {}, 0

    def cudaMalloc(self, n):  # noqa: N802
        import ctypes

        buf = ctypes.create_string_buffer(n)
        self.blocks[ctypes.addressof(buf)] = buf
        self.mallocs += 1
        return 0, ctypes.addressof(buf)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        import ctypes

        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaFree(self, ptr):  # noqa: N802
        self.blocks.pop(ptr, None)
        return (0,)

    cudaSetDevice = cudaStreamSynchronize = cudaStreamDestroy = staticmethod(lambda *a: (0,))  # noqa: N815
    cudaStreamCreate = staticmethod(lambda: (0, 7))  # noqa: N815


class FakeContext:
    """input_ids [batch, seq] int64 -> logits [batch, 2] float32 = (sum of ids, seq length)."""

    PROFILE = ((1, 1), (2, 8), (4, 16))

    def __init__(self):
        self.shape, self.addr = None, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.PROFILE
        ok = all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        self.shape = shape if ok else self.shape
        return ok

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def get_tensor_shape(self, name):
        return (self.shape[0], 2)

    def execute_async_v3(self, stream):
        import ctypes

        n = self.shape[0] * self.shape[1]
        ids = np.frombuffer((ctypes.c_int64 * n).from_address(self.addr["input_ids"]), np.int64).reshape(self.shape)
        out = np.stack([ids.sum(1), np.full(len(ids), ids.shape[1])], 1).astype(np.float32)
        ctypes.memmove(self.addr["logits"], out.ctypes.data, out.nbytes)
        return True


def fake_trt():
    from types import SimpleNamespace

    dtypes = {"input_ids": np.int64, "logits": np.float32}
    engine = SimpleNamespace(num_io_tensors=2, get_tensor_name=lambda i: list(dtypes)[i],
                             get_tensor_mode=lambda n: "in" if n == "input_ids" else "out",
                             get_tensor_dtype=lambda n: dtypes[n], create_execution_context=FakeContext,
                             get_tensor_profile_shape=lambda n, p: FakeContext.PROFILE)
    runtime = SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    logger = type("Logger", (), {"ERROR": 1, "__init__": lambda self, sev: None})
    return SimpleNamespace(Logger=logger, Runtime=lambda logger: runtime, TensorIOMode=SimpleNamespace(INPUT="in"),
                           nptype=lambda dt: dt)


def test_engine_session_host_side_on_fake_cuda(tmp_path, monkeypatch):
    import edgekit.deps
    import edgekit.runtime.trt as rt

    cudart = FakeCudart()
    fakes = {"tensorrt_rtx": fake_trt(), "cuda.bindings.runtime": cudart}
    monkeypatch.setattr(edgekit.deps, "require", lambda name: fakes[name])
    monkeypatch.setattr(rt, "cuda_devices", lambda: ([{"name": "fake", "compute_capability": "8.6"}], None))
    (tmp_path / "model.engine").write_bytes(b"plan")
    (tmp_path / "model.engine.json").write_text(json.dumps({"backend": "tensorrt-rtx"}))
    with rt.open_engine_session(tmp_path, backend="tensorrt-rtx") as sess:
        assert sess.input_names == ["input_ids"] and sess.output_names == ["logits"]
        ids = np.array([[2, 5, 3], [2, 9, 3]], dtype=np.int32)  # cast to the engine's int64
        out = sess.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert out["logits"].tolist() == [[10.0, 3.0], [14.0, 3.0]]
        sess.run({"input_ids": ids[:1, :2]})
        assert cudart.mallocs == 2  # buffers are reused when the next batch fits
        with pytest.raises(InputError, match=r"outside the engine's profile.*\(4, 16\)"):
            sess.run({"input_ids": np.ones((8, 3), np.int64)})
        with pytest.raises(InputError, match="input_ids"):
            sess.run({"attention_mask": ids})


@needs_rtx
def test_check_and_bench_take_an_engine_folder_and_say_no_gpu(tiny_model, tiny_onnx, tiny_data, tmp_path):
    """A built engine folder (engine + config + tokenizer, no weights) is an engine artifact; without a GPU,
    check and bench say so in one line (exit 1) instead of mistaking it for a model folder."""
    import subprocess
    import sys

    from edgekit.artifact import resolve
    from edgekit.engine import build

    art = build(tiny_onnx, tmp_path / "eng" / "model.engine", options(precision="fp32"), data=tiny_data)
    folder = art.path.parent
    assert (folder / "config.json").is_file() and resolve(folder).kind == "engine"
    if _gpus():
        pytest.skip("a CUDA GPU is present: the engine would run")
    for args in (["check", tiny_model, folder, "--data", tiny_data], ["bench", folder, "--iterations", "2"]):
        r = subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                           timeout=300)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1 and len(lines) == 1 and "No CUDA GPU found" in lines[0], r.stderr



def test_build_options_refuse_what_cannot_apply_before_any_work(tmp_path):
    """--workspace 10**17 was a pybind11 TypeError traceback after the build, 0 on an LM build was ignored,
    --timing-cache with TensorRT-RTX a warning, and an LM --out named like an engine file became a folder."""
    from edgekit.engine import BuildOptions
    from edgekit.errors import InputError
    from edgekit.llm.rtx_cli import build as build_lm

    for mib in (10 ** 17, 0, -5, 1.5):
        with pytest.raises(InputError, match="--workspace must be a whole number of MiB from 1 to"):
            BuildOptions(workspace_mib=mib).validate()
    with pytest.raises(InputError, match="--timing-cache applies to classic TensorRT only"):
        BuildOptions(timing_cache=str(tmp_path / "t.cache")).validate()
    with pytest.raises(InputError, match="--workspace must be a whole number"):
        build_lm(tmp_path, tmp_path / "out", [], {"workspace_mib": 0, "precision": "fp16"}, {"workspace_mib"},
                 False, False)
    with pytest.raises(InputError, match="names an engine file, but a causal-LM engine is a folder"):
        build_lm(tmp_path, tmp_path / "lm.engine", [], {"precision": "fp16"}, set(), False, False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "lm.engine").exists()


def test_one_provider_name_is_taken_as_a_list(tiny_onnx):
    from edgekit.runtime.session import OrtSession

    with OrtSession(tiny_onnx / "model.onnx", providers="CPUExecutionProvider") as session:
        assert session.providers == ["CPUExecutionProvider"] and session.input_names


def test_an_onnx_quantized_for_the_cpu_is_refused_with_the_command_that_fixes_it(tiny_int8, tmp_path):
    """TensorRT-RTX's parser failed on it mid-build with "replace the op ... or register a plugin", naming the
    staged copy of the file, which was deleted by then."""
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra (tensorrt-rtx) is not installed")
    out = tmp_path / "engine"
    r = subprocess.run([sys.executable, "-m", "edgekit", "build", str(tiny_int8), "--out", str(out), "--precision",
                        "int8"], capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "was quantized for the CPU (" in lines[0], r.stderr
    assert "--target tensorrt-rtx --calibration-data DATA" in lines[0] and not out.exists()


def test_a_fixed_batch_size_is_named_with_the_flags_that_match_it(tmp_path):
    """An ONNX exported with batch 1 failed in TensorRT ("static dimensions that don't match kOPT") with a fix
    about --compute-capability and --precision."""
    pytest.importorskip("tensorrt_rtx", reason="the rtx extra (tensorrt-rtx) is not installed")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "fixed.onnx"))
    out = tmp_path / "engine"
    r = subprocess.run([sys.executable, "-m", "edgekit", "build", str(tmp_path / "fixed.onnx"), "--out", str(out),
                        "--precision", "fp32"], capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("[edgekit]")]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "Input 'x' has a fixed batch size of 1" in lines[0] and "--min-batch 1 --opt-batch 1 --max-batch 1" in lines[0]
    assert not out.exists()
    r = subprocess.run([sys.executable, "-m", "edgekit", "build", str(tmp_path / "fixed.onnx"), "--out", str(out),
                        "--precision", "fp32", "--min-batch", "1", "--opt-batch", "1", "--max-batch", "1",
                        "--compute-capability", "8.6"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
