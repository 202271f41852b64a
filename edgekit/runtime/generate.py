"""Text generation for causal-LM artifacts: numpy + ONNX Runtime (or onnxruntime-genai) + tokenizers. No torch.

``load_generator(folder)`` gives a :class:`TextGenerator`; ``generate(prompt_or_messages, ...)`` returns the
text, or with ``stream=True`` an iterator of text pieces. Two engines step the model: ``"ort"``, a loop of
edgekit's own over an ONNX Runtime session that carries the KV cache, and ``"genai"``, onnxruntime-genai's
generator. Tokenization, the chat template, sampling options, stop strings and errors are edgekit's for both.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import InputError, ModelError, first_line
from .generate_engines import ENGINES, Engine, GenaiEngine, OrtLoopEngine, SamplingOptions
from .session import check_threads
from .tokenizer import check_unicode

DEFAULT_ENGINE = "genai"  # chosen by measurement: bench/llm.md (decode tok/s, TTFT, both engines interleaved)
ONNX_NAME = "model.onnx"
TRT_ENGINE = "tensorrt-rtx"  # edgekit.runtime.generate_trt: selected when the folder holds model.engine


@dataclass
class LMInfo:
    """What the runtime needs to know about a causal-LM artifact (from manifest.json's ``llm`` section)."""

    layers: int
    kv_heads: int
    head_dim: int
    eos_ids: list[int]
    context_length: int
    vocab_size: int = 0


def read_lm_info(folder: Path) -> LMInfo:
    """Model facts from manifest.json ``llm``, else genai_config.json, else config.json."""
    manifest = _read_json(folder / "manifest.json")
    llm = manifest.get("llm") if isinstance(manifest.get("llm"), dict) else {}
    genai = _read_json(folder / "genai_config.json").get("model")
    genai = genai if isinstance(genai, dict) else {}
    cfg = _read_json(folder / "config.json")
    cfg = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    try:
        return _lm_info(folder, llm, genai, cfg)
    except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong type in one of the three files
        raise ModelError(f"'{folder}' has malformed model facts", f"{type(exc).__name__}: {exc}"[:200],
                         "Re-create the artifact with edgekit optimize (or export-lm)") from None


def _lm_info(folder: Path, llm: dict, genai: dict, cfg: dict) -> LMInfo:
    dec = genai.get("decoder") or {}
    for ours, gpt2 in (("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"),
                       ("hidden_size", "n_embd"), ("max_position_embeddings", "n_positions")):
        cfg.setdefault(ours, cfg.get(gpt2))
    layers = llm.get("num_layers") or dec.get("num_hidden_layers") or cfg.get("num_hidden_layers")
    kv = llm.get("num_kv_heads") or dec.get("num_key_value_heads") or cfg.get("num_key_value_heads") \
        or cfg.get("num_attention_heads")
    hd = llm.get("head_dim") or dec.get("head_size") or cfg.get("head_dim")
    if hd is None and cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    eos = llm.get("eos_token_ids") or genai.get("eos_token_id") or cfg.get("eos_token_id")
    eos = _id_list(eos) + _id_list(_read_json(folder / "generation_config.json").get("eos_token_id"))
    context = llm.get("context_length") or genai.get("context_length") or cfg.get("max_position_embeddings")
    if not (layers and kv and hd and eos and context):
        raise ModelError(f"'{folder}' is not a text-generation artifact edgekit can run",
                         "manifest.json/genai_config.json/config.json lack layers, kv heads, head_dim, eos ids or "
                         "context length", "Re-create it with: edgekit optimize MODEL --task text-generation")
    vocab = llm.get("vocab") or genai.get("vocab_size") or cfg.get("vocab_size") or 0
    return LMInfo(int(layers), int(kv), int(hd), sorted(set(eos)), int(context), int(vocab))


def is_generation_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds a causal-LM artifact (manifest task, or a genai_config.json)."""
    folder = Path(folder)
    task = _read_json(folder / "manifest.json").get("task")
    return task == "text-generation" or (folder / "genai_config.json").is_file()


class ChatTemplate:
    """The tokenizer's Jinja chat template (tokenizer_config.json ``chat_template`` or chat_template.jinja)."""

    def __init__(self, folder: Path):
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        source = tok_cfg.get("chat_template")
        if isinstance(source, list):  # named templates: take "default"
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if (folder / "chat_template.jinja").is_file():  # transformers prefers the file to tokenizer_config's copy
            source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        self.source = source
        self.specials = {k: _token_text(tok_cfg.get(k)) for k in ("bos_token", "eos_token")}

    def render(self, messages: list[dict]) -> str:
        if not self.source:
            raise InputError("Chat messages cannot be formatted", "the artifact's tokenizer has no chat template",
                             "Pass a plain prompt string (chat=False) instead")
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415  (optional)
        except ImportError:
            raise InputError("Chat messages cannot be formatted", "jinja2 is not installed",
                             "Install it with: pip install 'edgekit[cpu]'") from None
        import jinja2  # noqa: PLC0415

        # transformers' environment: loop controls ({% break %}) and strftime_now (dated system prompts)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _template_error
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(self.source).render(messages=messages, add_generation_prompt=True,
                                                       **self.specials)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:  # not its InputError
            raise ModelError("The artifact's chat template cannot be rendered", first_line(exc, 200),
                             "Fix chat_template in tokenizer_config.json (or chat_template.jinja), or pass a plain "
                             "prompt string") from None


class TextGenerator:
    """Generate text from a causal-LM artifact. One generation at a time per instance (not thread-safe)."""

    def __init__(self, folder: Path, engine: Engine, info: LMInfo, tokenizer):
        self.folder = folder
        self.engine = engine
        self.info = info
        self.tokenizer = tokenizer
        self.template = ChatTemplate(folder)

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def encode(self, prompt, chat: bool | None = None) -> list[int]:
        """Token ids of a prompt string or a list of chat messages (the template applied)."""
        if isinstance(prompt, list | tuple) and prompt and isinstance(prompt[0], dict):
            for i, m in enumerate(prompt):
                if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                    raise InputError(f"Message {i} is not a {{'role': str, 'content': str}} pair", f"got {m!r}"[:120],
                                     "Give every message a role and a text content")
            text, templated = self.template.render(list(prompt)), True
        elif isinstance(prompt, str):
            if not prompt.strip():
                raise InputError("Empty prompt", "there is no text to continue", "Pass a non-empty prompt")
            templated = bool(chat)
            text = self.template.render([{"role": "user", "content": prompt}]) if templated else prompt
        else:
            raise InputError("Prompt not understood", f"got {type(prompt).__name__}",
                             "Pass a string, a list of strings, or a list of {'role', 'content'} messages")
        check_unicode(text, "Prompt")
        # a template writes its own special tokens; a plain prompt gets the tokenizer's (a Llama's <s>), as in
        # transformers and in the export's validation, which the runtime otherwise answered a different input than
        ids = self.tokenizer.encode(text, add_special_tokens=not templated).ids
        if not ids:
            raise InputError("Empty prompt", "it tokenizes to no tokens", "Pass a non-empty prompt")
        if len(ids) >= self.info.context_length:
            raise InputError(f"Prompt too long: {len(ids)} tokens",
                             f"the model's context is {self.info.context_length} tokens including the answer",
                             "Shorten the prompt")
        return ids

    def generate(self, prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, stop: str | list[str] | None = None, seed: int | None = None,
                 stream: bool = False, chat: bool | None = None):
        """Text generated after ``prompt`` (a string, chat messages, or a list of either -> a list of texts).

        ``temperature`` 0 is greedy; above 0 samples with ``top_k`` (0 = off) and ``top_p`` (1 = off), reproducibly
        for a given ``seed``. Generation stops at an EOS token, at the first of the ``stop`` strings (cut from
        the text) or after ``max_new_tokens``. ``chat``: apply the chat template to a plain string (messages always
        get it). ``stream=True``: an iterator of text pieces whose concatenation is the text.
        """
        opts = _options(max_new_tokens, temperature, top_p, top_k, seed)
        stops = [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s != ""]  # "" stops nothing
        if not all(isinstance(s, str) for s in stops):
            raise InputError("stop must be a string or a list of strings", f"got {stop!r}"[:120], None)
        if isinstance(prompt, list | tuple) and prompt and not isinstance(prompt[0], dict):
            if stream:
                raise InputError("stream=True takes one prompt", "a list of prompts was given",
                                 "Stream prompts one at a time")
            return [self.generate(p, max_new_tokens, temperature, top_p, top_k, stop, seed, False, chat) for p in prompt]
        ids = self.encode(prompt, chat)
        pieces = self._pieces(ids, opts, stops)
        return pieces if stream else "".join(pieces)

    def generate_ids(self, ids: list[int], max_new_tokens: int, opts: SamplingOptions | None = None) -> list[int]:
        """Generated token ids (no text handling, EOS not included): for gates and benchmarks."""
        opts = opts or _options(max_new_tokens, 0.0, 1.0, 0, None)
        limit = min(max_new_tokens, self.info.context_length - len(ids))
        out = []
        for tok in self.engine.tokens(ids, limit, opts):
            if tok in self.info.eos_ids:
                break
            out.append(tok)
        return out

    def _pieces(self, ids: list[int], opts: SamplingOptions, stops: list[str]) -> Iterator[str]:
        limit = min(opts.max_new_tokens, self.info.context_length - len(ids))
        out: list[int] = []
        sent = 0
        text = ""
        for tok in self.engine.tokens(ids, limit, opts):
            if tok in self.info.eos_ids:
                break
            out.append(tok)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
                continue
            cut = _first_stop(text, stops)
            if cut is not None:
                text = text[:cut]
                break
            safe = len(text) - _held_back(text, stops)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        else:
            text = text.rstrip("\ufffd") if text.endswith("\ufffd") else text
        if len(text) > sent:
            yield text[sent:]

    def close(self) -> None:
        self.engine.close()


def load_generator(folder: str | Path, engine: str = "auto", threads: int | None = None) -> TextGenerator:
    """Load a causal-LM artifact folder (model.onnx + tokenizer.json + manifest/genai_config)."""
    folder = Path(folder)
    check_threads(threads, "threads")  # -1, 2.5, '2' and True were accepted
    if not (folder / ONNX_NAME).is_file():
        raise ModelError(f"No {ONNX_NAME} in '{folder}'", "it is not a text-generation artifact",
                         "Pass the folder written by: edgekit optimize MODEL --task text-generation")
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"No tokenizer.json in '{folder}'", "the runtime tokenizes prompts itself",
                         "Re-create the artifact with edgekit optimize")
    info = read_lm_info(folder)
    from ..deps import require  # noqa: PLC0415

    try:
        tokenizer = require("tokenizers").Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ModelError(f"tokenizer.json in '{folder}' cannot be loaded", first_line(exc, 200),
                         "Copy tokenizer.json from the model the artifact was made from") from None
    name = _resolve_engine(folder, engine)
    if name == TRT_ENGINE:  # a TensorRT-RTX decoder engine: needs its GPU (one-line BackendError without one)
        from .generate_trt import TrtDecoderEngine  # noqa: PLC0415

        return TextGenerator(folder, TrtDecoderEngine(folder, info, threads), info, tokenizer)
    try:
        eng: Engine = (GenaiEngine if name == "genai" else OrtLoopEngine)(folder, info, threads)
    except ModelError:
        if engine != "auto" or name != "genai":
            raise
        eng = OrtLoopEngine(folder, info, threads)  # e.g. a model type onnxruntime-genai does not run (GPT-2)
    return TextGenerator(folder, eng, info, tokenizer)


def _resolve_engine(folder: Path, engine: str) -> str:
    if engine not in ("auto", *ENGINES, TRT_ENGINE):
        raise InputError(f"Unknown generation engine '{engine}'", None,
                         f"Choose one of: auto, {', '.join(ENGINES)}, {TRT_ENGINE}")
    if engine == TRT_ENGINE or (engine == "auto" and (folder / "model.engine").is_file()):
        return TRT_ENGINE  # the artifact holds an engine: run it (pass engine='ort' for its ONNX on the CPU)
    dynamo = _read_json(folder / "manifest.json").get("route") == "dynamo"  # graphs genai's runtime does not drive
    if engine != "auto":
        if engine == "genai" and not (folder / "genai_config.json").is_file():
            raise ModelError(f"Engine 'genai' needs genai_config.json in '{folder}'", None, "Use engine='ort'")
        if engine == "genai" and dynamo:  # its inputs are not the builder's: a RuntimeError at the first prompt
            raise ModelError(f"Engine 'genai' cannot run '{folder}'", "it was exported by the dynamo route, whose "
                             "graph onnxruntime-genai does not drive", "Use engine='ort' (the default for it)")
        return engine
    from ..deps import available  # noqa: PLC0415

    if DEFAULT_ENGINE == "genai" and not dynamo and (folder / "genai_config.json").is_file() \
            and available("onnxruntime_genai"):
        return "genai"
    return "ort"


def _options(max_new_tokens, temperature, top_p, top_k, seed) -> SamplingOptions:
    for name, value, kind, what in (("max_new_tokens", max_new_tokens, numbers.Integral, "a whole number"),
                                    ("temperature", temperature, numbers.Real, "a number"),
                                    ("top_p", top_p, numbers.Real, "a number"),
                                    ("top_k", top_k, numbers.Integral, "a whole number"),
                                    ("seed", 0 if seed is None else seed, numbers.Integral, "a whole number or None")):
        if isinstance(value, bool) or not isinstance(value, kind) or value != value:  # value != value: NaN
            raise InputError(f"{name} must be {what}, got {value!r}", None, None)
    if seed is not None and not 0 <= seed < 2**63:  # the engines take a 64-bit seed (a larger one: RuntimeError)
        raise InputError(f"seed must be from 0 to 2**63 - 1, got {seed}", None, None)
    if int(max_new_tokens) < 1:
        raise InputError(f"max_new_tokens={max_new_tokens} is not allowed", "it must be at least 1", None)
    if not 0 <= temperature < float("inf") or not 0 < top_p <= 1 or top_k < 0:
        raise InputError("Sampling options out of range", f"temperature={temperature}, top_p={top_p}, top_k={top_k}",
                         "Use temperature >= 0, 0 < top_p <= 1, top_k >= 0")
    return SamplingOptions(int(max_new_tokens), float(temperature), float(top_p), int(top_k), seed)


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that could begin a stop string (held until it resolves)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _template_error(message: str):
    raise InputError("Chat template refused the messages", message, "Check the roles and their order")


def _token_text(value) -> str:
    return value.get("content", "") if isinstance(value, dict) else (value or "")


def _id_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"'{path}' cannot be read", str(exc), "Re-create the artifact") from None
    return data if isinstance(data, dict) else {}


__all__ = ["TextGenerator", "load_generator", "is_generation_folder", "read_lm_info", "LMInfo", "SamplingOptions"]
