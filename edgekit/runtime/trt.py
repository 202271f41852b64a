"""TensorRT and TensorRT-RTX engines behind the runtime ``Session`` protocol (numpy in, numpy out).

CUDA memory and streams come from cuda-python's ``cuda.bindings.runtime``:
NVIDIA's own, released with each CUDA toolkit, a thin typed layer over the
CUDA runtime API that TensorRT's own Python samples use. The alternatives are
heavier or less kept: PyCUDA is community-maintained and builds against a
local toolkit, CuPy is a full array library, torch is not allowed in the
runtime. Host arrays are plain numpy; device buffers grow as needed and are
reused across calls.

A host without a GPU gets a one-line BackendError ("no CUDA GPU found") when a
session opens; the probe reads the driver directly (ctypes, libcuda), so it
needs neither TensorRT nor cuda-python.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError, InputError, ModelError
from .session import Session

BACKEND_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
BACKEND_NAMES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


def cuda_devices() -> tuple[list[dict], str | None]:
    """GPUs the CUDA driver sees (name, compute capability) and, when there are none, why."""
    try:
        lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return [], "no NVIDIA driver is installed (libcuda not found)"
    rc = lib.cuInit(0)
    if rc != 0:
        return [], f"the CUDA driver did not initialize (CUresult {rc})"
    count, version = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    lib.cuDriverGetVersion(ctypes.byref(version))
    devices = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGet(ctypes.byref(dev), i)
        lib.cuDeviceGetName(name, 256, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev)
        devices.append({"index": i, "name": name.value.decode(errors="replace"),
                        "compute_capability": f"{major.value}.{minor.value}",
                        "driver_cuda_version": f"{version.value // 1000}.{version.value % 1000 // 10}"})
    return devices, None if devices else "the CUDA driver reports no devices"


def require_gpu(device: int = 0) -> dict:
    """The GPU at ``device``, or a BackendError that says there is none and what to do instead."""
    devices, why = cuda_devices()
    if not devices:
        raise BackendError("No CUDA GPU found", why,
                           "Run the engine on a machine with an NVIDIA GPU and driver, or use the ONNX Runtime "
                           "backend (backend='onnxruntime') here")
    if not 0 <= device < len(devices):
        raise InputError(f"GPU {device} does not exist", f"this machine has {len(devices)} GPU(s)",
                         f"Pass a device index from 0 to {len(devices) - 1}")
    return devices[device]


def engine_backend(engine: Path) -> str | None:
    """The backend recorded in the engine's sidecar (``<engine>.json``), if any."""
    try:
        return json.loads(Path(str(engine) + ".json").read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


class EngineSession(Session):
    """A serialized engine on one GPU. ``backend`` None = the one in the sidecar, else 'tensorrt'.

    ``run`` holds a lock: one TensorRT execution context serves one call at a time.
    """

    def __init__(self, engine_path: str | Path, backend: str | None = None, device: int = 0):
        self.engine_path = Path(engine_path)
        self.backend = backend or engine_backend(self.engine_path) or "tensorrt"
        if self.backend not in BACKEND_MODULES:
            raise InputError(f"Unknown engine backend '{self.backend}'", None,
                             f"Choose one of: {', '.join(BACKEND_MODULES)}")
        self.device = device
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._engine = self._context = self._stream = self._cudart = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._dtypes: dict[str, np.dtype] = {}
        self._lock = threading.Lock()

    def open(self) -> "EngineSession":
        if self._context is not None:
            return self
        if not self.engine_path.is_file():
            raise ModelError(f"Engine '{self.engine_path}' not found", "no such file", "Build one with edgekit build")
        require_gpu(self.device)
        from ..deps import require

        trt = require(BACKEND_MODULES[self.backend])
        self._cudart = require("cuda.bindings.runtime")
        self._check(self._cudart.cudaSetDevice(self.device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise BackendError(f"{BACKEND_NAMES[self.backend]} cannot load engine '{self.engine_path}'",
                               "it was built for another GPU, TensorRT version or backend",
                               "Rebuild it with edgekit build on this machine's GPU / TensorRT version")
        self._context = self._engine.create_execution_context()
        self._stream = self._check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        return self

    def close(self) -> None:
        if self._cudart is not None:
            for ptr, _ in self._buffers.values():
                self._cudart.cudaFree(ptr)
            if self._stream is not None:
                self._cudart.cudaStreamDestroy(self._stream)
        self._buffers.clear()
        self._context = self._engine = self._stream = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._context is None:
            self.open()
        with self._lock:
            return self._run(feeds)

    def run_timed(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """``run`` plus the GPU compute time in ms (CUDA events around the enqueue, copies excluded),
        trtexec's split of GPU compute vs end-to-end; bench times the end-to-end call around it."""
        if self._context is None:
            self.open()
        cudart = self._cudart
        with self._lock:
            start = self._check(cudart.cudaEventCreate(), "cudaEventCreate")
            end = self._check(cudart.cudaEventCreate(), "cudaEventCreate")
            try:
                outputs = self._run(feeds, events=(start, end))
                return outputs, float(self._check(cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))
            finally:
                cudart.cudaEventDestroy(start)
                cudart.cudaEventDestroy(end)

    def _run(self, feeds: dict[str, np.ndarray], events=None) -> dict[str, np.ndarray]:
        cudart, kind = self._cudart, self._cudart.cudaMemcpyKind
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"Engine input(s) {', '.join(missing)} not given", None,
                             f"Pass all of: {', '.join(self.input_names)}")
        for name in self.input_names:
            host = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            if not self._context.set_input_shape(name, tuple(host.shape)):
                raise InputError(f"Input '{name}' of shape {tuple(host.shape)} is outside the engine's profile",
                                 self._profile_text(name), "Rebuild with wider --max-batch/--max-seq, or pass "
                                 "smaller batches")
            ptr = self._device_buffer(name, host.nbytes)
            self._check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind.cudaMemcpyHostToDevice,
                                               self._stream), "cudaMemcpyAsync")
            self._context.set_tensor_address(name, ptr)
        outputs = {}
        for name in self.output_names:
            outputs[name] = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._dtypes[name])
            self._context.set_tensor_address(name, self._device_buffer(name, outputs[name].nbytes))
        if events:
            self._check(cudart.cudaEventRecord(events[0], self._stream), "cudaEventRecord")
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError(f"{BACKEND_NAMES[self.backend]} execution failed", None,
                               "Check the inputs' shapes and types against the engine's profile")
        if events:
            self._check(cudart.cudaEventRecord(events[1], self._stream), "cudaEventRecord")
        for name, host in outputs.items():
            self._check(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes,
                                               kind.cudaMemcpyDeviceToHost, self._stream), "cudaMemcpyAsync")
        self._check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: (v.astype(np.float32) if v.dtype == np.float16 else v) for name, v in outputs.items()}

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < max(nbytes, 1):
            if ptr:
                self._cudart.cudaFree(ptr)
            ptr = int(self._check(self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self._buffers[name] = (ptr, max(nbytes, 1))
        return ptr

    def _profile_text(self, name: str) -> str:
        try:
            lo, opt, hi = self._engine.get_tensor_profile_shape(name, 0)
            return f"profile 0 allows {tuple(lo)} to {tuple(hi)} (optimal {tuple(opt)})"
        except Exception:  # very old engines without profile queries
            return "the engine's optimization profile does not cover it"

    def _check(self, result, call: str):
        """cuda-python returns (err, value...): raise on an error, else return the value."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self._cudart.cudaGetErrorString(err)[1].decode(errors="replace")
            raise BackendError(f"CUDA call {call} failed", name, "Run edgekit doctor to check the GPU and driver")
        return values[0] if values else None


def find_engine(folder: Path) -> Path:
    """The one engine file in ``folder`` (or ``folder`` itself when it is an engine file)."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix in ENGINE_SUFFIXES:
        return folder
    engines = sorted(p for p in folder.iterdir() if p.suffix in ENGINE_SUFFIXES) if folder.is_dir() else []
    if not engines:
        raise ModelError(f"No engine in '{folder}'", f"no *{', *'.join(ENGINE_SUFFIXES)} file there",
                         "Build one into this folder with edgekit build --out FOLDER/model.engine")
    if len(engines) > 1:
        raise ModelError(f"'{folder}' holds {len(engines)} engines ({', '.join(p.name for p in engines[:4])})",
                         "the runtime loads exactly one", "Keep one engine per artifact folder")
    return engines[0]


def open_engine_session(folder: str | Path, backend: str, device: int = 0) -> EngineSession:
    """A not-yet-opened session on the engine in ``folder``, checked against its sidecar's backend."""
    if backend not in BACKEND_MODULES:
        raise InputError(f"Unknown engine backend '{backend}'", None, f"Choose one of: {', '.join(BACKEND_MODULES)}")
    engine = find_engine(Path(folder))
    built = engine_backend(engine)
    if built and built != backend:
        raise InputError(f"Engine '{engine}' was built with {BACKEND_NAMES.get(built, built)}",
                         f"backend '{backend}' cannot load it", f"Pass backend='{built}'")
    return EngineSession(engine, backend=backend, device=device)
