"""What a measurement ran on: CPU model and flags, cores, load, threads, GPUs, library versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .artifact import versions

#: thread-count variables that change what a benchmark measures
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")
#: packages beyond artifact.TRACKED_PACKAGES whose version a report shows
EXTRA_PACKAGES = ("cuda-python", "tensorrt-cu12", "tensorrt-cu13", "optimum-onnx", "matplotlib")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {"model": model, "logical_cores": os.cpu_count(), "usable_cores": usable,
            "flags": {f: f in flags for f in CPU_FLAGS}}


def gpu_info() -> list[dict]:
    """GPUs seen by nvidia-smi (name, driver, compute capability, memory); else by the CUDA driver; else []."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return _driver_gpus()
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,compute_cap,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "driver": parts[1], "compute_capability": parts[2], "memory": parts[3]})
    return gpus


def _driver_gpus() -> list[dict]:
    from .runtime.trt import cuda_devices  # ctypes only: no TensorRT, no cuda-python needed

    devices, _ = cuda_devices()
    return [{"name": d["name"], "driver": f"CUDA {d['driver_cuda_version']}",
             "compute_capability": d["compute_capability"], "memory": None} for d in devices]


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def busy_cores(seconds: float = 0.5) -> float | None:
    """Cores kept busy by other processes: /proc/stat sampled while this process sleeps (None off Linux).

    Unlike the load average (a minute-long mean that counts this process's own
    past work), this says what is competing right now. Niced work is not counted.
    """
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # idle + iowait + nice: a process at a raised nice level yields the CPU to this one, it does not compete
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0) + fields[1]
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        import time

        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def free_threads(usable: int, busy: float | None) -> int:
    """Threads that do not contend with ``busy`` cores of other work (at least 1)."""
    if busy is None:
        return usable
    return max(1, min(usable, usable - int(busy + 0.35)))  # a core 65 % busy counts as taken


def thread_info(threads: int | None = None) -> dict:
    """Threads a measurement used, the variables that set library thread pools, and torch's pool if loaded."""
    torch = sys.modules.get("torch")
    return {"intra_op": threads,
            "torch": torch.get_num_threads() if torch is not None and hasattr(torch, "get_num_threads") else None,
            "env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}}


def library_versions() -> dict:
    out = versions()
    for name in EXTRA_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _governor() -> str | None:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return None


def environment(threads: int | None = None) -> dict:
    """The machine a result came from; ``threads`` = intra-op threads the measurement used (None = not a bench)."""
    return {"cpu": cpu_info(), "gpus": gpu_info(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_average_1m": load_average(),
            "cpu_governor": _governor(), "threads": thread_info(threads), "versions": library_versions()}
