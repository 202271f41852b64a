"""Optimization profiles (min/opt/max batch and sequence length) for engine builds.

Sequence lengths come from the data the engine will serve: the median token
length is the shape TensorRT tunes for (batches are length-sorted, so padded
lengths stay near each sentence's own), the longest one, rounded up to a power
of two and capped at the model's limit, is the maximum. The minimum stays 1:
inputs shorter than any in the data ("meh.") are common, and a low minimum
costs nothing at run time. Explicit lengths always win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import BackendError, InputError

MAX_DATA_ROWS = 20000  # token lengths of a seeded sample this large are plenty


@dataclass
class Profile:
    batch: tuple[int, int, int]
    seq: tuple[int, int, int]
    source: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"batch": list(self.batch), "sequence": list(self.seq), "source": self.source}

    def apply(self, builder, network, config, backend_name: str) -> None:
        """Add one profile covering every network input (dim 0 = batch, dim 1 = sequence)."""
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shapes = [self._shape(tensor, k) for k in range(3)]
            profile.set_shape(tensor.name, *shapes)
        if config.add_optimization_profile(profile) < 0:
            raise BackendError(f"{backend_name} rejected the optimization profile", f"batch {self.batch}, "
                               f"sequence {self.seq}", "Check that min <= opt <= max for --*-batch and --*-seq")

    def _shape(self, tensor, k: int) -> tuple[int, ...]:
        dims = list(tensor.shape)
        out = []
        for axis, dim in enumerate(dims):
            if axis < 2:
                name, wanted = ("batch", self.batch) if axis == 0 else ("seq", self.seq)
                if dim >= 0 and tuple(wanted) != (dim, dim, dim):  # TensorRT failed on it with a fix about precision
                    raise InputError(f"Input '{tensor.name}' has a fixed {'batch' if axis == 0 else 'sequence'} "
                                     f"size of {dim}", f"the profile asks {'/'.join(map(str, wanted))} (min/opt/max)",
                                     f"Pass --min-{name} {dim} --opt-{name} {dim} --max-{name} {dim}, or export with "
                                     "a dynamic axis")
                out.append(wanted[k])
            elif dim < 0:
                raise InputError(f"Input '{tensor.name}' has a dynamic axis {axis} beyond batch and sequence",
                                 f"its shape is {tuple(dims)}", "Export with static sizes for axes after the second")
            else:
                out.append(dim)
        return tuple(out)


def resolve_profile(options, folder: Path, data, text_column: str | None) -> Profile:
    """Batch range from ``options``; sequence range from explicit options, then ``data``, then defaults."""
    from .runtime.tokenizer import model_max_length

    limit = model_max_length(folder)
    source: dict = {"batch": "options", "model_max_length": limit}
    lo, opt, hi = 1, None, limit
    if data is not None:
        stats = token_length_stats(folder, data, text_column)
        opt, hi = _round8(stats["p50"]), min(limit, _next_pow2(stats["max"]))
        source.update(sequence="data", data=str(data), token_lengths=stats)
    else:
        source["sequence"] = "defaults"
    lo = options.min_seq if options.min_seq is not None else lo
    hi = options.max_seq if options.max_seq is not None else hi
    opt = options.opt_seq if options.opt_seq is not None else max(lo, min(opt or 128, hi))
    if any(v is not None for v in (options.min_seq, options.opt_seq, options.max_seq)):
        source["overridden"] = [k for k in ("min_seq", "opt_seq", "max_seq") if getattr(options, k) is not None]
    batch = (options.min_batch, options.opt_batch, options.max_batch)
    _check_range("batch", batch)
    _check_range("seq", (lo, opt, hi))
    if limit and hi > limit:  # the engine would accept inputs its position table cannot hold
        raise InputError(f"--max-seq {hi} is longer than the model's {limit} positions",
                         "model_max_length / max_position_embeddings caps every input", f"Pass --max-seq {limit} or less")
    return Profile(batch, (lo, opt, hi), source)


def token_length_stats(folder: Path, data, text_column: str | None) -> dict:
    """Token-length distribution of ``data`` under the model's own tokenizer."""
    from .data import load_dataset
    from .runtime.tokenizer import TextEncoder

    ds = load_dataset(data, text_column=text_column, require_labels=False).subset(MAX_DATA_ROWS)
    lengths = sorted(TextEncoder(folder).token_lengths(ds.texts, ds.pairs))
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
    return {"rows": len(lengths), "min": lengths[0], "p50": pick(0.5), "p95": pick(0.95), "max": lengths[-1]}


def _check_range(name: str, values: tuple[int, int, int]) -> None:
    lo, opt, hi = values
    if not (isinstance(lo, int) and 1 <= lo <= opt <= hi):
        raise InputError(f"Invalid {name} range: min {lo}, opt {opt}, max {hi}",
                         "they must satisfy 1 <= min <= opt <= max",
                         f"Fix --min-{name}/--opt-{name}/--max-{name}")


def _round8(n: int) -> int:
    return max(8, -(-n // 8) * 8)


def _next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
