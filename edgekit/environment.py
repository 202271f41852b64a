"""What a measurement ran on: CPU model and flags, cores, GPUs, library versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from .artifact import versions

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
    """GPUs seen by nvidia-smi (empty list when there is no NVIDIA driver)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
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


def environment() -> dict:
    return {"cpu": cpu_info(), "gpus": gpu_info(), "os": f"{platform.system()} {platform.release()}",
            "versions": versions()}
