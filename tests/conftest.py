"""Shared fixtures: tiny models the tests build, the reference model and SST-2 from ../shared."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEKIT_SHARED", ROOT.parent / "shared"))
REF_MODEL = SHARED / "models" / "minilm-l6-sst2"
SST2 = SHARED / "data" / "sst2"

WORDS = ("good great fun funny gripping moving superb film movie plot acting bad boring awful dull cliches "
         "not very a an the is was it this that and but of to with long string never lets up ending").split()


_SCRATCH: dict[str, str] = {}


def pytest_configure(config):
    """torch's compile cache (made in $TMPDIR when torch._dynamo is imported, which in-process exports do) and a
    local Ray cluster's session logs (/tmp/ray) go in one scratch folder that is removed when the run ends: the
    suite leaves nothing in $TMPDIR. Values the caller set are kept."""
    import tempfile

    scratch = tempfile.mkdtemp(prefix="edgekit-tests-")
    _SCRATCH["path"] = scratch
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(scratch, "torchinductor"))
    os.environ.setdefault("RAY_TMPDIR", scratch)


def pytest_unconfigure(config):
    if "path" in _SCRATCH:
        shutil.rmtree(_SCRATCH.pop("path"), ignore_errors=True)


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


requires_shared = pytest.mark.skipif(not (REF_MODEL / "config.json").is_file() or not (SST2 / "dev.tsv").is_file(),
                                     reason=f"../shared (reference model and SST-2) not found at {SHARED}")
requires_toolchain = pytest.mark.skipif(not (_have("torch") and _have("transformers")),
                                        reason="toolchain extra (torch, transformers) not installed")


@pytest.fixture(scope="session")
def ref_model() -> Path:
    if not (REF_MODEL / "config.json").is_file():
        pytest.skip(f"reference model not found at {REF_MODEL}")
    return REF_MODEL


@pytest.fixture(scope="session")
def sst2_dev() -> Path:
    if not (SST2 / "dev.tsv").is_file():
        pytest.skip(f"SST-2 not found at {SST2}")
    return SST2 / "dev.tsv"


@pytest.fixture(scope="session")
def sst2_train() -> Path:
    if not (SST2 / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {SST2}")
    return SST2 / "train.tsv"


def build_tiny_model(folder: Path, num_labels: int = 2, seed: int = 0, layers: int = 2, heads: int = 4,
                     hidden: int = 32, intermediate: int = 64) -> Path:
    """A tiny BertForSequenceClassification with a real WordPiece tokenizer, saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *list("abcdefghijklmnopqrstuvwxyz,.!'")]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    fast.save_pretrained(str(folder))
    torch.manual_seed(seed)
    labels = ["negative", "positive", "neutral", "mixed"][:num_labels]
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=128, num_labels=num_labels,
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny 2-label BERT classifier folder (built once per session)."""
    if not (_have("torch") and _have("transformers")):
        pytest.skip("toolchain extra (torch, transformers) not installed")
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small labeled tsv in SST-2's format."""
    import random

    rng = random.Random(0)
    pos, neg = ["good", "great", "fun", "gripping", "superb"], ["bad", "boring", "awful", "dull", "not good"]
    lines = ["label\tsentence"]
    for i in range(48):
        label = i % 2
        words = rng.sample(pos if label else neg, 2) + rng.sample(["film", "movie", "plot", "acting"], 1)
        lines.append(f"{label}\tthe {' '.join(words)} was {'very ' * (i % 4)}{rng.choice(pos if label else neg)} .")
    path = tmp_path_factory.mktemp("data") / "tiny.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def copy_of():
    def _copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst
    return _copy


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tiny_data, tmp_path_factory) -> Path:
    """The tiny model exported (and validated) once per session."""
    from edgekit.export import export

    return export(tiny_model, tmp_path_factory.mktemp("onnx") / "fp32", data=tiny_data).path


@pytest.fixture(scope="session")
def tiny_int8(tiny_onnx, tmp_path_factory) -> Path:
    """The tiny ONNX quantized for the CPU target (dynamic int8)."""
    from edgekit.quantize import quantize

    return quantize(tiny_onnx, tmp_path_factory.mktemp("int8") / "cpu").path


@pytest.fixture(scope="session")
def tiny_optimized(tiny_model, tiny_data, tmp_path_factory) -> Path:
    """``edgekit.pipeline.optimize`` on the tiny model: the folder a device app ships (int8 ONNX + tokenizer)."""
    from edgekit.bench import BenchOptions
    from edgekit.pipeline import GateOptions, OptimizeOptions, optimize

    out = tmp_path_factory.mktemp("optimized") / "tiny-int8"
    # the tiny model has random weights: its accuracy is chance, so the gate is opened wide
    optimize(tiny_model, tiny_data, out, OptimizeOptions(bench=BenchOptions(iterations=5, warmup=1), gate=GateOptions(max_accuracy_drop=0.5)))
    return out


@pytest.fixture(scope="session", autouse=True)
def _isolated_step_cache(tmp_path_factory):
    """Tests never read or fill the user's step cache (~/.cache/edgekit): each session gets its own."""
    old = os.environ.get("EDGEKIT_CACHE")
    os.environ["EDGEKIT_CACHE"] = str(tmp_path_factory.mktemp("edgekit-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEKIT_CACHE", None)
    else:
        os.environ["EDGEKIT_CACHE"] = old


def cpuinfo_flags() -> set[str]:
    """The CPU flags the kernel reports, read here independently of edgekit.environment."""
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    for line in (cpuinfo.read_text() if cpuinfo.is_file() else "").splitlines():
        if line.split(":")[0].strip() == "flags":
            return set(line.split(":", 1)[1].split())
    return set()


def raw_http(port: int, data: bytes) -> bytes:
    """Send ``data`` to 127.0.0.1:``port`` on a fresh socket as it is; what comes back until it closes (or 10 s)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except TimeoutError:
            pass
    return got


def http_refusal_cases(route: str) -> list[tuple[bytes, int, bytes]]:
    """Requests the example servers' http.server refuses itself: (request line, status, words of the error)."""
    return [(f"PUT {route} HTTP/1.1".encode(), 405, b"PUT is not served"),
            (b"DELETE /health HTTP/1.1", 405, b"DELETE is not served"),
            (f"BREW {route} HTTP/1.1".encode(), 501, b"Unsupported method"),
            (b"GET /health extra HTTP/1.1", 400, b"Bad request syntax")]


def check_http_refusal(port: int, request_line: bytes, status: int, needle: bytes) -> None:
    """The refusal is one-line JSON (not http.server's HTML page) that closes the connection; 405 names what is
    allowed; a HEAD gets its status with no body."""
    got = raw_http(port, request_line + b"\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status) and b"Content-Type: application/json" in head, got
    assert needle in json.loads(body)["error"].encode() and b"Connection: close" in head
    assert (b"Allow: GET, POST" in head) == (status == 405)
    got = raw_http(port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 405") and got.endswith(b"\r\n\r\n")
