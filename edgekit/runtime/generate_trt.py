"""The TensorRT-RTX engine behind :class:`~edgekit.runtime.generate.TextGenerator`: a decoder engine on one GPU.

Written against NVIDIA's TensorRT Python API (the ``tensorrt_rtx`` module mirrors ``tensorrt``):
``Runtime.deserialize_cuda_engine``, one ``IExecutionContext`` per optimization profile
(``set_optimization_profile_async``), ``set_input_shape`` / ``set_tensor_address`` and
``execute_async_v3`` on a CUDA stream from cuda-python (``cuda.bindings.runtime``), as
:mod:`edgekit.runtime.trt` does for encoders. The engine has two profiles (see
:mod:`edgekit.llm.rtx_engine`): context 0 runs the prefill with an empty cache, context 1 one token per
step. The KV cache never leaves the GPU: each step's ``present.*`` buffers are the next step's
``past_key_values.*`` (two buffer sets, swapped); only the last position's logits are copied back.

Without a GPU, opening the engine raises the one-line BackendError of :func:`edgekit.runtime.trt.require_gpu`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import BackendError, InputError, ModelError
from .generate_engines import Engine, SamplingOptions, pick_token
from .trt import require_gpu

ENGINE_NAME = "model.engine"


class TrtDecoderEngine(Engine):
    """Greedy/sampled decoding on a TensorRT-RTX decoder engine (batch 1)."""

    name = "tensorrt-rtx"

    def __init__(self, folder: Path, info, threads: int | None = None, device: int = 0):
        path = Path(folder) / ENGINE_NAME
        if not path.is_file():
            raise ModelError(f"No {ENGINE_NAME} in '{folder}'", "this artifact has no TensorRT-RTX engine",
                             "Build one: edgekit build FOLDER --out FOLDER --precision int4")
        try:
            require_gpu(device)
        except BackendError as exc:
            raise BackendError("No CUDA GPU found for the TensorRT-RTX decoder engine", exc.why,
                               "Run it on an RTX GPU, or run the ONNX beside it on the CPU: engine='ort'") from None
        from ..deps import require

        self.trt = require("tensorrt_rtx")
        self.cudart = require("cuda.bindings.runtime")
        self._check(self.cudart.cudaSetDevice(device), "cudaSetDevice")
        self.sidecar = json.loads((Path(str(path) + ".json")).read_text()) if Path(str(path) + ".json").is_file() \
            else {}
        self.info = info
        self._buffers: list[int] = []
        self._open(path)

    def _open(self, path: Path) -> None:
        trt = self.trt
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT-RTX cannot load '{path}'", "it was built for other compute capabilities "
                               "or another TensorRT-RTX version", "Rebuild it with --compute-capability for this GPU")
        self.stream = self._check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        per_profile = trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE  # each context sized for its profile
        self.contexts = [self.engine.create_execution_context(per_profile)
                         for _ in range(min(2, self.engine.num_optimization_profiles))]
        for index, context in enumerate(self.contexts):
            context.set_optimization_profile_async(index, int(self.stream))
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.past_names = [n for n in names if n.startswith("past_key_values.")]
        self.has_positions = "position_ids" in names
        self.vocab = int(self.engine.get_tensor_shape("logits")[-1])
        self.max_prompt = int(self.engine.get_tensor_profile_shape("input_ids", 0)[2][1])
        self.max_context = int(self.engine.get_tensor_profile_shape("attention_mask", len(self.contexts) - 1)[2][1])
        kv_bytes = self.info.kv_heads * self.max_context * self.info.head_dim * self.dtypes[self.past_names[0]].itemsize
        self.kv = [{n: self._malloc(kv_bytes) for n in self.past_names} for _ in range(2)]
        self.logits = self._malloc(self.max_prompt * self.vocab * 4)
        self.small = {n: self._malloc(max(self.max_context, 1) * 8) for n in ("input_ids", "attention_mask",
                                                                          "position_ids")}

    def tokens(self, ids: list[int], limit: int, opts: SamplingOptions) -> Iterator[int]:
        if len(ids) > self.max_prompt or len(ids) + limit > self.max_context:
            raise InputError(f"Prompt of {len(ids)} tokens + {limit} new is outside the engine's profiles",
                             f"it was built for prompts up to {self.max_prompt} and {self.max_context} tokens in all",
                             "Rebuild with a larger --max-prompt / --max-seq, or shorten the prompt")
        rng = np.random.default_rng(opts.seed)
        logits = self._step(0, np.asarray([ids], dtype=np.int64), past_len=0, src=1, dst=0)
        total = len(ids)
        for i in range(limit):
            tok = pick_token(logits, opts, rng)
            yield tok
            if i + 1 == limit:
                break
            logits = self._step(1, np.asarray([[tok]], dtype=np.int64), past_len=total, src=i % 2, dst=(i + 1) % 2)
            total += 1

    def _step(self, profile: int, step: np.ndarray, past_len: int, src: int, dst: int) -> np.ndarray:
        """One engine run: ``step`` tokens after ``past_len`` cached ones (read from set ``src``, written to ``dst``)."""
        context = self.contexts[min(profile, len(self.contexts) - 1)]
        seq = step.shape[1]
        total = past_len + seq
        feeds = {"input_ids": step, "attention_mask": np.ones((1, total), dtype=np.int64)}
        if self.has_positions:
            feeds["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None, :]
        for name, host in feeds.items():
            host = np.ascontiguousarray(host, dtype=self.dtypes[name])
            self._set(context, name, host.shape, self.small[name])
            self._copy_in(self.small[name], host)
        kv = (1, self.info.kv_heads)
        for name in self.past_names:
            self._set(context, name, (*kv, past_len, self.info.head_dim), self.kv[src][name])
            context.set_tensor_address("present." + name[len("past_key_values."):], self.kv[dst][name])
        context.set_tensor_address("logits", self.logits)
        if not context.execute_async_v3(int(self.stream)):
            raise BackendError("TensorRT-RTX execution failed", None, "Check the prompt length against the profiles")
        out = np.empty(self.vocab, dtype=np.float32)
        offset = (seq - 1) * self.vocab * 4
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(out.ctypes.data, self.logits + offset, out.nbytes, kind,
                                                self.stream), "cudaMemcpyAsync")
        self._check(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out

    def _set(self, context, name: str, shape: tuple, ptr: int) -> None:
        if not context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise InputError(f"Input '{name}' of shape {tuple(shape)} is outside the engine's profile", None,
                             "Rebuild the engine with larger --max-prompt / --max-seq")
        context.set_tensor_address(name, ptr)

    def _copy_in(self, ptr: int, host: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream),
                    "cudaMemcpyAsync")

    def _malloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.cudart.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._buffers.append(ptr)
        return ptr

    def close(self) -> None:
        for ptr in self._buffers:
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        self.contexts = []

    def _check(self, result, call: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(f"CUDA call {call} failed", str(err), "Run edgekit doctor to check the GPU and driver")
        return values[0] if values else None
