"""Causal-LM latency: time-to-first-token, prefill and decode tokens/s, peak resident memory, model size.

Every runner starts from the prompt *text* (tokenization included) and produces exactly ``new_tokens`` tokens
(EOS ignored) so decode rates compare like with like. Runners are timed in interleaved rounds in one process
(A B C, B C A, ...), and ratios against the reference are taken per round, so a noisy shared machine moves
them less than the absolute figures. Peak resident memory is measured in a fresh subprocess per runner
(``python -m edgekit.llm.bench --probe KIND PATH``): load + one generation, VmHWM.

* ``TTFT``: prompt text -> first new token (tokenize + prefill + first pick).
* ``prefill tok/s``: prompt tokens / TTFT.
* ``decode tok/s``: (new_tokens - 1) / (time of the last token - time of the first token).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..deps import require
from ..environment import load_average
from .gate import held_out_texts


@dataclass
class LMBenchOptions:
    """Sizes of the causal-LM benchmark; the CLI flags share these names."""

    prompt_tokens: int = field(default=128, metadata={"help": "prompt length in tokens"})
    new_tokens: int = field(default=64, metadata={"help": "tokens generated per run (EOS ignored)"})
    rounds: int = field(default=5, metadata={"help": "interleaved rounds"})
    threads: int = field(default=2, metadata={"help": "intra-op threads for every runner"})
    memory: bool = field(default=True, metadata={"help": "measure peak RSS in a subprocess per runner"})


@dataclass
class Timing:
    prompt_tokens: int
    ttft: float
    decode_tps: float
    total: float


class ArtifactRunner:
    """The shipped runtime (edgekit.runtime.generate) on an artifact folder."""

    def __init__(self, folder: str | Path, threads: int, engine: str = "auto", name: str | None = None):
        from ..runtime.generate import load_generator  # noqa: PLC0415
        from ..runtime.generate_engines import SamplingOptions  # noqa: PLC0415

        self.gen = load_generator(folder, engine=engine, threads=threads)
        self.name = name or f"edgekit ({self.gen.engine_name})"
        self.kind, self.path, self.engine = "artifact", str(folder), engine
        self._opts = SamplingOptions
        self.size_bytes = sum(f.stat().st_size for f in Path(folder).glob("model.onnx*"))

    def run(self, text: str, n: int) -> Timing:
        t0 = time.perf_counter()
        ids = self.gen.encode(text)
        stamps, out = [], []
        for tok in self.gen.engine.tokens(ids, n, self._opts(n, min_new_tokens=n)):
            stamps.append(time.perf_counter())
            out.append(tok)
        self.gen.tokenizer.decode(out)
        return _timing(len(ids), t0, stamps)


class TorchRunner:
    """The original: transformers ``generate`` (KV cache on, greedy) on PyTorch eager."""

    def __init__(self, folder: str | Path, threads: int, name: str = "PyTorch eager generate"):
        torch = require("torch")
        transformers = require("transformers")
        torch.set_num_threads(threads)
        self.torch, self.name, self.kind, self.path = torch, name, "torch", str(folder)
        self.tok = transformers.AutoTokenizer.from_pretrained(str(folder))
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.size_bytes = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))

        class Stamp(transformers.StoppingCriteria):  # called once per new token: records when it arrived
            def __init__(self, stamps: list[float]):
                self.stamps = stamps

            def __call__(self, input_ids, scores, **kw):
                self.stamps.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        self._stamp = Stamp

    def run(self, text: str, n: int) -> Timing:
        stamps: list[float] = []
        t0 = time.perf_counter()
        enc = self.tok(text, return_tensors="pt", add_special_tokens=False)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                                      stopping_criteria=[self._stamp(stamps)], pad_token_id=self.tok.eos_token_id)
        self.tok.decode(out[0, enc["input_ids"].shape[1]:])
        return _timing(enc["input_ids"].shape[1], t0, stamps)


class LlamaCppRunner:
    """llama.cpp through llama-cpp-python on a GGUF file (greedy, EOS ignored)."""

    def __init__(self, gguf: str | Path, threads: int, name: str = "llama.cpp (llama-cpp-python)"):
        llama_cpp = require("llama_cpp")
        self.name, self.kind, self.path = name, "llamacpp", str(gguf)
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, verbose=False)
        self.size_bytes = Path(gguf).stat().st_size

    def run(self, text: str, n: int) -> Timing:
        t0 = time.perf_counter()
        ids = self.llm.tokenize(text.encode(), add_bos=False, special=False)
        self.llm.reset()
        stamps, out = [], []
        for tok in self.llm.generate(ids, top_k=1, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            out.append(tok)
            if len(out) == n:
                break
        self.llm.detokenize(out)
        return _timing(len(ids), t0, stamps)


def _timing(prompt_tokens: int, t0: float, stamps: list[float]) -> Timing:
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return Timing(prompt_tokens, stamps[0] - t0, decode, stamps[-1] - t0)


def bench_prompt(tokenizer_json: str | Path, text_file: str | Path, n_tokens: int) -> str:
    """A prompt of ``n_tokens`` tokens (by the artifact's tokenizer): SST-2 train sentences joined with spaces."""
    tokenizers = require("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    text = " ".join(line.strip() for line in held_out_texts(text_file)[:400])
    ids = tok.encode(text, add_special_tokens=False).ids[:n_tokens]
    return tok.decode(ids)


def run_bench(runners: list, prompt: str, options: LMBenchOptions, reference: str | None = None) -> dict:
    """Interleaved rounds over ``runners``; medians, spreads and per-round ratios against ``reference``."""
    for r in runners:  # warm-up: first-run allocations, thread pools
        r.run(prompt, min(8, options.new_tokens))
    rows = {r.name: [] for r in runners}
    load_before = load_average()
    for i in progress.bar(range(options.rounds), total=options.rounds, desc="interleaved rounds"):
        for r in runners[i % len(runners):] + runners[: i % len(runners)]:
            rows[r.name].append(r.run(prompt, options.new_tokens))
    ref = reference or runners[0].name
    results = {}
    for r in runners:
        t = rows[r.name]
        results[r.name] = {
            "kind": r.kind, "path": r.path, "size_mb": round(r.size_bytes / 1e6, 1),
            "prompt_tokens": t[0].prompt_tokens,
            "ttft_ms": _stats([x.ttft * 1e3 for x in t]),
            "prefill_tps": _stats([x.prompt_tokens / x.ttft for x in t]),
            "decode_tps": _stats([x.decode_tps for x in t]),
            "decode_speedup_vs_ref": _stats([x.decode_tps / y.decode_tps for x, y in zip(t, rows[ref], strict=True)]),
            "ttft_speedup_vs_ref": _stats([y.ttft / x.ttft for x, y in zip(t, rows[ref], strict=True)]),
        }
    return {"reference": ref, "rounds": options.rounds, "new_tokens": options.new_tokens,
            "threads": options.threads, "load_average_1m": {"before": load_before, "after": load_average()},
            "runners": results}


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def peak_rss_mb(kind: str, path: str, threads: int, engine: str = "auto") -> float | None:
    """Peak RSS (MB) of a fresh process that loads the runner and generates 16 tokens after a short prompt."""
    cmd = [sys.executable, "-m", "edgekit.llm.bench", "--probe", kind, path, str(threads), engine]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ))
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    except (IndexError, KeyError, ValueError):
        return None


def make_runner(kind: str, path: str, threads: int, engine: str = "auto"):
    if kind == "artifact":
        return ArtifactRunner(path, threads, engine)
    if kind == "torch":
        return TorchRunner(path, threads)
    return LlamaCppRunner(path, threads)


def _probe(kind: str, path: str, threads: int, engine: str) -> None:
    runner = make_runner(kind, path, threads, engine)
    runner.run("the film was good and the plot was fun " * 3, 8)
    print(json.dumps({"peak_rss_mb": _vm_hwm_mb()}))


def _vm_hwm_mb() -> float:
    """This process's peak RSS: VmHWM (per address space; ru_maxrss would carry the parent's peak across fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--probe":
    _probe(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
