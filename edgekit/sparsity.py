"""Unstructured and 2:4 semi-structured weight sparsity (zeros in place; shapes unchanged).

Where it speeds things up, and where it does not:

* **TensorRT on NVIDIA Ampere or newer** (sm_80+: A100, A10, RTX 30xx/40xx,
  H100, Jetson Orin): a 2:4 pattern (at most 2 non-zeros in every 4
  consecutive weights along the input dimension) runs on sparse tensor cores
  when the engine is built with sparse weights enabled (``trtexec
  --sparsity=enable``, ``BuilderFlag.SPARSE_WEIGHTS``) in fp16 or int8. Only
  GEMM-heavy layers gain (NVIDIA quotes up to 2x math throughput for the
  sparse GEMMs themselves; end to end it is far less, and at batch 1 with short
  sequences often nothing); TensorRT picks dense kernels where they are
  faster. Not measured here (no GPU), and edgekit's ``build`` does not set
  that flag yet.
* **ONNX Runtime on CPU**: no speedup. Its MatMul / MatMulInteger kernels are
  dense, so zeros cost the same as any other value; they only make the file
  compress better (gzip/zstd). Unstructured sparsity has no fast kernel on
  either backend; it is a size/compression tool, or a step towards structured
  pruning.

Masks cover the encoder's Linear layers (attention and FFN); embeddings,
pooler and classifier stay dense. During recovery the masks are re-applied
after every optimizer step, so the zeros survive fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from .deps import require
from .errors import InputError
from .finetune import QuietCallback

PATTERNS = ("2:4", "unstructured:R (0 < R < 1, e.g. unstructured:0.5)")


@dataclass(frozen=True)
class SparsitySpec:
    kind: str          # "2:4" or "unstructured"
    ratio: float       # share of zeros per weight matrix (0.5 for 2:4)

    def __str__(self) -> str:
        return "2:4" if self.kind == "2:4" else f"unstructured:{self.ratio:g}"


def parse_sparsity(text: str | None) -> SparsitySpec | None:
    """``"2:4"`` or ``"unstructured:0.5"`` -> SparsitySpec; None/"" -> None; anything else -> InputError."""
    if text is None or not str(text).strip():
        return None
    value = str(text).strip().lower()
    if value in ("2:4", "2of4", "semi-structured"):
        return SparsitySpec("2:4", 0.5)
    kind, _, ratio = value.partition(":")
    if kind == "unstructured":
        try:
            share = float(ratio)
        except ValueError:
            share = -1.0
        if 0 < share < 1:
            return SparsitySpec("unstructured", share)
    raise InputError(f"Invalid --sparsity '{text}'", f"expected one of: {', '.join(PATTERNS)}",
                     "Pass --sparsity 2:4 or --sparsity unstructured:0.5")


def sparse_linears(model) -> dict:
    """Name -> nn.Linear for every Linear inside the encoder (the layers sparsity applies to)."""
    torch = require("torch")
    encoder = model.base_model.encoder
    prefix = next(name for name, module in model.named_modules() if module is encoder)
    return {f"{prefix}.{name}": m for name, m in encoder.named_modules() if isinstance(m, torch.nn.Linear)}


def sparsity_masks(model, spec: SparsitySpec) -> dict:
    """Name of each Linear weight -> boolean keep-mask by weight magnitude, per matrix."""
    torch = require("torch")
    masks = {}
    for name, linear in sparse_linears(model).items():
        w = linear.weight.detach().abs()
        if spec.kind == "2:4":
            if w.shape[1] % 4:
                raise InputError(f"2:4 sparsity needs input widths divisible by 4; '{name}' has {w.shape[1]}",
                                 None, "Use --sparsity unstructured:0.5, or an --ffn ratio that keeps a multiple of 4")
            groups = w.reshape(w.shape[0], -1, 4)
            top2 = groups.topk(2, dim=-1).indices
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top2, True).reshape(w.shape)
        else:
            k = int(round(spec.ratio * w.numel()))
            threshold = w.flatten().kthvalue(k).values if k > 0 else w.min() - 1
            mask = w > threshold
        masks[f"{name}.weight"] = mask
    return masks


def apply_masks(model, masks: dict) -> None:
    """Zero every weight outside its mask (in place)."""
    torch = require("torch")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))


def sparsity_report(model, spec: SparsitySpec) -> dict:
    """Measured share of zeros over the sparse layers, and whether every matrix holds the 2:4 pattern."""
    zeros = total = 0
    pattern = True
    for linear in sparse_linears(model).values():
        w = linear.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
        if w.shape[1] % 4 == 0:
            pattern = pattern and bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())
        else:
            pattern = False
    return {"pattern": str(spec), "zeros": round(zeros / total, 4) if total else 0.0,
            "matrices": len(sparse_linears(model)), "holds_2_4": pattern,
            "speedup_note": "GPU only: TensorRT sparse tensor cores (Ampere+, sparse weights enabled at build) "
                            "for 2:4; none on ONNX Runtime CPU"}


class KeepMasks(QuietCallback):
    """A Trainer callback that re-applies the sparsity masks after every optimizer step."""

    def __init__(self, masks: dict):
        self.masks = masks

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            apply_masks(model, self.masks)

