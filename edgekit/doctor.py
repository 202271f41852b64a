"""``edgekit doctor``: what this machine can build and run (backends, providers, GPUs, CPU flags)."""

from __future__ import annotations

import contextlib
from importlib import metadata

from .environment import cpu_info, gpu_info

#: backend -> (distribution names to look up, what it is for)
BACKENDS = {
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu"), "CPU inference (and CUDA/TensorRT providers in -gpu)"),
    "tensorrt": (("tensorrt", "tensorrt-cu13", "tensorrt-cu12"), "classic TensorRT builds and runs (needs a GPU)"),
    "tensorrt-rtx": (("tensorrt-rtx", "tensorrt_rtx"), "TensorRT-RTX: builds without a GPU, runs on RTX GPUs"),
    "cuda-python": (("cuda-python", "cuda-bindings"), "CUDA memory for the engine runtime"),
    "torch": (("torch",), "export and PyTorch baselines"),
}


#: backend -> the module edgekit imports to use it (an installed package whose native libraries fail to load
#: imports with an error; torch is left out: importing it takes seconds and its failures show at export)
MODULES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx",
           "cuda-python": "cuda.bindings.runtime"}


def doctor() -> dict:
    """A report of installed backends and versions, ONNX Runtime providers, GPUs and CPU features.

    ``backends_broken``: backend -> the first line of the error its module raises on import, for an installed
    backend that cannot be used (a missing shared library, say): listed as installed, it would seem usable."""
    from .runtime.trt import cuda_devices

    devices, why = cuda_devices()
    gpus = gpu_info() or devices
    versions = {name: _version(dists) for name, (dists, _) in BACKENDS.items()}
    return {"backends": versions,
            "backends_broken": {name: error for name, module in MODULES.items()
                                if versions.get(name) and (error := _import_error(module))},
            "onnxruntime_providers": _providers(),
            "gpus": gpus, "gpu_note": None if gpus else f"none ({why})",
            "cpu": cpu_info(),
            "tensorrt_rtx_targets": _rtx_targets()}


def format_doctor(report: dict) -> str:
    lines = ["Backends:"]
    for name, (_, purpose) in BACKENDS.items():
        version = report["backends"].get(name)
        broken = report.get("backends_broken", {}).get(name)
        lines.append(f"  {name:<13} {version or 'not installed':<16} "
                     f"{f'installed but fails to load: {broken}' if broken else purpose}")
    providers = report["onnxruntime_providers"]
    lines.append(f"ONNX Runtime providers: {', '.join(providers) if providers else 'none (onnxruntime not installed)'}")
    if report["gpus"]:
        for gpu in report["gpus"]:
            lines.append(f"GPU: {gpu.get('name')} (compute capability {gpu.get('compute_capability')}, "
                         f"driver {gpu.get('driver') or gpu.get('driver_cuda_version')})")
    else:
        lines.append(f"GPUs: {report['gpu_note']}")
    cpu = report["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    lines.append(f"CPU: {cpu['model']}, {cpu['usable_cores']} usable cores; {flags}")
    if report["tensorrt_rtx_targets"]:
        lines.append(f"TensorRT-RTX targets (--compute-capability): {', '.join(report['tensorrt_rtx_targets'])}")
    return "\n".join(lines)


def _version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    return None


def _import_error(module: str) -> str | None:
    """None when ``module`` imports, else its error's first line."""
    import importlib

    from .errors import first_line

    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001  (doctor reports, never fails: OSError for a missing library, ...)
        return f"{type(exc).__name__}: {first_line(exc, 160)}"
    return None


def _providers() -> list[str]:
    try:
        import onnxruntime
    except Exception:  # not installed, or a broken install: doctor reports, never fails
        return []
    return list(onnxruntime.get_available_providers())


def _rtx_targets() -> list[str]:
    try:
        import tensorrt_rtx
    except Exception:  # not installed or its libraries fail to load
        return []
    from .engine import _rtx_targets as targets

    return list(targets(tensorrt_rtx))
