"""ONNX -> TensorRT / TensorRT-RTX engine: precision from the graph, profiles from the data, verified layers.

One code path for both backends; the backend is an argument. TensorRT-RTX
builds ahead of time on a machine without a GPU, for the compute capabilities
named (RTX GPUs only: 7.5, 8.0, 8.6, 8.9, 12.0, 12.1; no 9.0). Classic
TensorRT builds on, and for, the GPU it runs on. Both build strongly typed
networks: fp16 and int8 come from the ONNX (see ``edgekit.precision``), never
from builder flags or implicit calibrators.

``build`` writes ``<engine>`` and ``<engine>.json`` (the sidecar) atomically:
each is written to a temporary file beside it and renamed only when the build
and its precision check succeeded.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import progress
from .artifact import ENGINE_SUFFIXES, MANIFEST, Artifact, copy_tokenizer_and_config, resolve, sha256_file
from .atomic import discard, temp_sibling
from .deps import require
from .engine_io import EngineOutputs, sidecar_path
from .errors import BackendError, InputError, ModelError
from .schema import opt
from .inspect_network import build_interruptibly, inspect_engine, parse, verify, verify_engine, walk
from .precision import (PRECISIONS, check_requested, graph_precision, int8_matmul_nodes, load_onnx, needs_conversion,
                        to_fp16)
from .profiles import Profile, resolve_profile

BACKENDS = ("tensorrt-rtx", "tensorrt")
MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
NAMES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}
#: TensorRT-RTX's compute capabilities; TensorRT-RTX itself is asked when installed
RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
RTX_DEFAULT_TARGETS = "TensorRT-RTX default targets: Ampere and later (not Turing 7.5)"


@dataclass
class BuildOptions:
    """Options of ``build``; the CLI flags and recipe keys share these names."""

    backend: str = opt("tensorrt-rtx", help="Engine backend.", choices=BACKENDS)
    precision: str = opt("fp16", help="fp32 | fp16 | int8 (int8 needs Q/DQ in the ONNX).", choices=PRECISIONS)
    int8_base: str = opt("fp16", help="Precision of the layers int8 Q/DQ does not cover.", choices=("fp16", "fp32"))
    compute_capabilities: list[str] = opt(factory=list, flag="compute-capability",
                                          help="TensorRT-RTX targets, comma-separated, e.g. 8.6,8.9,12.0 "
                                               "(default: the backend's, Ampere and later).")
    min_batch: int = opt(1, help="Smallest batch of the engine's profile.")
    opt_batch: int = opt(8, help="Batch the engine's profile is tuned for.")
    max_batch: int = opt(32, help="Largest batch of the engine's profile.")
    min_seq: int | None = opt(None, help="Shortest sequence of the profile (default: 1).")
    opt_seq: int | None = opt(None, help="Sequence length the profile is tuned for (default: median token length "
                                         "of the data, else min(128, max-seq)).")
    max_seq: int | None = opt(None, help="Longest sequence of the profile (default: longest in the data, next "
                                         "power of 2, else the model's limit).")
    workspace_mib: int | None = opt(None, help="Builder workspace in MiB (default: the backend's).",
                                    flag="workspace")
    timing_cache: str | None = opt(None, help="Timing cache file to reuse and update (classic TensorRT; a no-op "
                                              "in TensorRT-RTX).")
    allow_fallback: bool = opt(False, help="Warn instead of failing when the precision is not applied.")

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"Unknown backend '{self.backend}'", None, f"Choose one of: {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"Unknown precision '{self.precision}'", None, f"Choose one of: {', '.join(PRECISIONS)}")
        if self.int8_base not in ("fp16", "fp32"):
            raise InputError(f"Unknown int8 base precision '{self.int8_base}'", None, "Choose one of: fp16, fp32")
        check_workspace(self.workspace_mib)
        if self.timing_cache and self.backend == "tensorrt-rtx":  # was a warning after the build: refused, not ignored
            raise InputError("--timing-cache applies to classic TensorRT only",
                             "TensorRT-RTX keeps no timing cache (it is a no-op there)",
                             "Drop --timing-cache, or build with classic TensorRT (build --backend tensorrt, "
                             "optimize --target tensorrt)")
        if self.compute_capabilities and self.backend == "tensorrt":
            raise InputError("--compute-capability applies to TensorRT-RTX only",
                             "classic TensorRT builds for the GPU it runs on",
                             "Drop --compute-capability, or pass --backend tensorrt-rtx")


#: the largest --workspace: 1 PiB (the byte count must fit TensorRT's int64; more was a pybind11 TypeError)
MAX_WORKSPACE_MIB = 1 << 30


def check_workspace(mib) -> None:
    """An InputError unless ``mib`` is None or a whole number of MiB from 1 to MAX_WORKSPACE_MIB."""
    if mib is None:
        return
    if isinstance(mib, bool) or not isinstance(mib, int) or not 1 <= mib <= MAX_WORKSPACE_MIB:
        raise InputError(f"--workspace must be a whole number of MiB from 1 to {MAX_WORKSPACE_MIB}, got {mib!r}",
                         None, "Leave it out for the backend's default")


def build(onnx: str | Path, out: str | Path, options: BuildOptions | None = None, data: str | Path | None = None,
          force: bool = False, text_column: str | None = None) -> Artifact:
    """Build an engine from ``onnx`` (a file or an artifact folder) into ``out`` (an engine file or a folder).

    ``data`` (tsv/csv/jsonl or a datasets name) sets the sequence profile from
    its token lengths; explicit ``options`` lengths override. Raises
    InputError/ModelError/BackendError with nothing written on failure.
    """
    options = options or BuildOptions()
    options.validate()
    src = _onnx_file(onnx)
    engine = engine_path(out)
    if engine.exists() and not force:
        raise InputError(f"Engine '{engine}' already exists", "refusing to overwrite it", "Pass --force to replace it")
    foreign = _foreign_folder(engine.parent, src.parent)
    if foreign and not force:
        raise InputError(f"Output '{engine.parent}' is a non-empty folder that edgekit did not write",
                         "the engine's tokenizer and config would sit beside files that are not its own",
                         "Choose another --out or pass --force")
    other = _other_model(src.parent, engine.parent)
    if other and not force:
        raise InputError(f"Output '{engine.parent}' holds another model's {other}",
                         "the runtime would serve this engine with that model's labels and vocabulary",
                         "Choose another --out, or pass --force to replace them")
    trt = require(MODULES[options.backend])
    targets = compute_capabilities(trt, options)
    gpus = _preflight(trt, options)
    carried = graph_precision(load_onnx(src))
    check_requested(src, carried, options.precision)
    profile = resolve_profile(options, src.parent, data, text_column)
    started = time.perf_counter()
    with EngineOutputs(engine) as outputs:
        built_from, conversion = _precision_onnx(src, carried, options, outputs)
        record = _build(trt, built_from, src, options, targets, profile, outputs, gpus)
        record.update(onnx={"source": str(src), "sha256": sha256_file(src), "carried": carried,
                            "built_from": str(outputs.final(built_from)), "conversion": conversion})
        record["build_seconds"] = round(time.perf_counter() - started, 2)
        sidecar = outputs.write_sidecar(record, options=asdict(options))
    # --force into a foreign folder, or over an engine of another model (its labels and vocabulary): ours win
    _copy_runtime_files(src.parent, engine.parent, replace=foreign or bool(other))
    return Artifact(engine, "engine", engine, sidecar)


def _foreign_folder(folder: Path, source: Path) -> bool:
    """True when the engine's folder holds files edgekit did not write: the engine's tokenizer and config would sit
    beside someone else's (an existing config.json was kept, the wrong one for the engine). The source ONNX's own
    folder (an engine beside its ONNX) and a folder of earlier builds or an edgekit artifact are not."""
    if not folder.is_dir() or folder.resolve() == source.resolve():
        return False
    names = [p for p in folder.iterdir() if not p.name.startswith(".")]
    owned = (folder / MANIFEST).is_file() or any(sidecar_path(p).is_file() for p in names
                                                  if p.suffix in ENGINE_SUFFIXES)
    return bool(names) and not owned


def engine_path(out: str | Path) -> Path:
    """``out`` as an engine file: a folder (existing, or a new name without a suffix) gets model.engine."""
    out = Path(out)
    if out.is_dir() or not out.suffix:
        return out / "model.engine"
    if out.suffix not in ENGINE_SUFFIXES:
        raise InputError(f"Engine path '{out}' has the suffix '{out.suffix}'",
                         f"engines are named *{', *'.join(ENGINE_SUFFIXES)}", "Pass --out NAME.engine or a folder")
    return out


def compute_capabilities(trt, options: BuildOptions, classic: str = "--backend tensorrt") -> list[str]:
    """Normalized target list ('8.6', ...); unknown ones raise with the valid list (and, for 9.0, the flag that
    picks classic TensorRT in the calling command: ``classic``)."""
    valid = _rtx_targets(trt) if options.backend == "tensorrt-rtx" else ()
    chosen = []
    for raw in options.compute_capabilities:
        cc = _normalize_cc(raw)
        if cc not in valid:
            extra = f" (9.0 is Hopper, e.g. H100, not an RTX GPU: use {classic})" if cc == "9.0" else ""
            raise InputError(f"Unknown compute capability '{raw}' for TensorRT-RTX{extra}", None,
                             f"Choose from: {', '.join(valid)}")
        if cc not in chosen:
            chosen.append(cc)
    return chosen


def _rtx_targets(trt) -> tuple[str, ...]:
    names = [n for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
    return tuple(f"{int(n[2:]) // 10}.{int(n[2:]) % 10}" for n in names) or RTX_TARGETS


def _normalize_cc(raw: str) -> str:
    text = str(raw).strip().lower().removeprefix("sm").removeprefix("_").replace("sm_", "")
    if "." in text:
        return text
    return f"{text[:-1]}.{text[-1]}" if text.isdigit() and len(text) >= 2 else text


def _onnx_file(onnx: str | Path) -> Path:
    art = resolve(onnx)
    if art.kind != "onnx":
        raise ModelError(f"'{onnx}' is not an ONNX model", f"it is a {art.kind} artifact",
                         "Run edgekit export (and quantize for int8) first, and pass its model.onnx or folder")
    return art.model_file


def _precision_onnx(src: Path, carried: dict, options: BuildOptions,
                    outputs: EngineOutputs) -> tuple[Path, dict | None]:
    """The ONNX to parse: ``src`` itself, or its fp16 (or int8-over-fp16) rewrite beside the engine."""
    if not needs_conversion(carried, options.precision, options.int8_base):
        return src, None
    target = outputs.stage(f"{outputs.engine.stem}.{options.precision}.onnx")
    info = to_fp16(src, target)
    info["written_to"] = str(outputs.final(target))
    return target, info


def _build(trt, onnx_path: Path, source: Path, options: BuildOptions, targets: list[str], profile: Profile,
           outputs: EngineOutputs, gpus: list[dict]) -> dict:
    name = NAMES[options.backend]
    shown = onnx_path if onnx_path == source else f"{source} (its {options.precision} rewrite)"
    builder, network, parser, logger = parse(trt, onnx_path, name, shown)  # the parser owns the network's weights
    summary = walk(network)
    problems = verify(summary, options.precision, int8_matmul_nodes(load_onnx(onnx_path)))
    warnings = _precision_problems(problems, options, "network")
    config = builder.create_builder_config()
    _configure(trt, config, options, targets, bool(gpus))
    profile.apply(builder, network, config, name)
    cache = _attach_timing_cache(config, options, warnings)
    with progress.stage("engine", f"{name} {options.precision}, "
                        f"compute capabilities {', '.join(targets) or 'default'}"):
        plan = build_interruptibly(trt, builder, network, config)
    if plan is None:
        raise BackendError(f"{name} could not build an engine from '{shown}'",
                           " ".join((logger.errors[-1] if logger.errors else "no error was logged").split())[:300],
                           "Check --compute-capability and --precision (e.g. Turing 7.5 has no fp32 GEMM in "
                           "TensorRT-RTX), or set EDGEKIT_DEBUG=1")
    outputs.write_engine(plan)
    if cache is not None:
        outputs.write_timing_cache(Path(options.timing_cache), config.get_timing_cache().serialize())
    inspected = _inspect(trt, plan, logger, options, gpus, warnings)
    return {"backend": options.backend, "backend_version": getattr(trt, "__version__", "unknown"),
            "precision": options.precision, "int8_base": options.int8_base if options.precision == "int8" else None,
            "compute_capabilities": targets or None,
            "targets": f"compute capabilities {', '.join(targets)}" if targets else
            (RTX_DEFAULT_TARGETS if options.backend == "tensorrt-rtx" else "the GPU it was built on"),
            "profiles": [profile.as_dict()], "engine_bytes": plan.nbytes,
            "network": summary, "verification": {"network": problems or "passed", "engine": inspected},
            "warnings": warnings}


def _preflight(trt, options: BuildOptions) -> list[dict]:
    """The GPUs here; classic TensorRT needs one, and version 10 or later (strongly typed networks)."""
    from .runtime.trt import cuda_devices

    gpus, why = cuda_devices()
    if options.backend != "tensorrt":
        return gpus
    if int(str(getattr(trt, "__version__", "10")).split(".")[0]) < 10:
        raise BackendError(f"TensorRT {trt.__version__} is too old", "edgekit builds strongly typed networks",
                           "Install TensorRT 10 or later: pip install 'edgekit[gpu]'")
    if not gpus:
        raise BackendError("Classic TensorRT needs a GPU to build", f"no CUDA GPU found: {why}",
                           "Build on the target GPU, or pass --backend tensorrt-rtx to build ahead of time here")
    return gpus


def _precision_problems(problems: list[str], options: BuildOptions, where: str) -> list[str]:
    if problems and not options.allow_fallback:
        raise BackendError(f"--precision {options.precision} was not applied in the parsed {where}", problems[0],
                           "Re-quantize with edgekit quantize --target tensorrt (int8) or pass an fp16 ONNX; "
                           "--allow-fallback builds anyway")
    return [f"precision fallback ({where}): {p}" for p in problems]


def configure_targets(trt, config, targets: list[str], workspace_mib: int | None) -> None:
    """The compute capabilities an engine is built for (TensorRT-RTX, ahead of time) and the workspace limit."""
    if targets:
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)


def _configure(trt, config, options: BuildOptions, targets: list[str], have_gpu: bool) -> None:
    configure_targets(trt, config, targets, options.workspace_mib)
    if have_gpu:  # the engine inspector reads per-layer precision only from DETAILED engines
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED


def _attach_timing_cache(config, options: BuildOptions, warnings: list[str]):
    if not options.timing_cache:
        return None
    path = Path(options.timing_cache)
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if not config.set_timing_cache(cache, False):
        warnings.append(f"timing cache '{path}' does not match this GPU/TensorRT; built without it")
        return None
    return cache


def _inspect(trt, plan, logger, options: BuildOptions, gpus: list[dict], warnings: list[str]) -> dict | str:
    if not gpus:
        return "not run: no GPU here (TensorRT-RTX deserializes engines only on a GPU)"
    try:
        info = inspect_engine(trt, plan, logger)
    except Exception as exc:  # an RTX engine for other targets cannot load on this GPU
        if options.backend == "tensorrt":
            raise
        warnings.append(f"engine inspector skipped: {' '.join(str(exc).split())[:200]}")
        return "skipped: the engine does not load on this GPU"
    warnings.extend(_precision_problems(verify_engine(info, options.precision), options, "engine"))
    return info


def _other_model(src: Path, dst: Path) -> str | None:
    """The first of config.json / tokenizer.json that ``dst`` holds other than ``src``'s (an earlier build's, of
    another model), else None: the runtime would label the new engine with the old model's classes."""
    for name in ("config.json", "tokenizer.json"):
        ours, theirs = src / name, dst / name
        with contextlib.suppress(OSError):
            if ours.is_file() and theirs.is_file() and ours.read_bytes() != theirs.read_bytes():
                return name
    return None


def _copy_runtime_files(src: Path, dst: Path, replace: bool = False) -> None:
    """Tokenizer and config beside the engine (when absent, or every one with ``replace``: ``--force`` into a
    folder of other files), so ``edgekit.runtime.load`` can run the folder."""
    if src.resolve() == dst.resolve():
        return
    with contextlib.suppress(OSError):
        missing = [p for p in ("config.json", "tokenizer.json") if not (dst / p).exists()]
        if missing or replace:
            tmp = temp_sibling(dst / "runtime-files")  # a killed copy's leftover is swept here
            try:
                copy_tokenizer_and_config(src, tmp)
                for f in tmp.iterdir():
                    if replace or not (dst / f.name).exists():
                        os.replace(f, dst / f.name)
            finally:
                discard(tmp)


__all__ = ["BuildOptions", "build", "engine_path", "compute_capabilities", "sidecar_path"]
