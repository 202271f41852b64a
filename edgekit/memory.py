"""Refuse a batch whose activations cannot fit in this machine's memory, before the run starts.

A batch too large for the machine (``bench --batch-size 100000``) is otherwise
ended by the kernel's out-of-memory killer with no message: "Killed", exit
137, after minutes of tokenizing. The figure here is a lower bound on what one
encoder layer holds at once on a CPU backend (the residual stream in and out,
and the larger of the FFN's activation with its int8 copy or the attention's
Q/K/V with its scores); when even that exceeds the memory the system reports
available, the run cannot finish, and it is refused in one line with the
largest batch that the bound allows. Being a lower bound, it refuses no run
that could finish. Past 1/PEAK_FACTOR of the available memory a warning says
the run may be killed, with a batch that should fit: ONNX Runtime's real peak
was 4.6x the bound for the reference MiniLM's int8 artifact and 7.5x for its
fp32 export (`bench --batch-size 2000 --data ../shared/data/sst2/dev.tsv`, rows
of 57 tokens: 5.3 and 8.6 GiB of peak resident memory against 1.14 GiB).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import progress
from .errors import InputError
from .runtime.tokenizer import read_config

FLOAT = 4   # bytes per fp32 activation
PEAK_FACTOR = 8   # a run's real peak over the bound, rounded up from the 4.6x and 7.5x measured (module docstring)
GIB = 1 << 30
_warned: set[tuple[str, int, int]] = set()


def available_bytes() -> int | None:
    """Memory the system can give this process now (Linux MemAvailable; elsewhere free physical pages); None when
    unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _first_int(config: dict, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def activation_bytes(config: dict, batch: int, seq: int) -> int | None:
    """A lower bound on one encoder layer's live activations for ``batch`` rows of ``seq`` tokens; None when the
    config names no hidden size (the bound is then unknown, and nothing is refused)."""
    hidden = _first_int(config, ("hidden_size", "dim", "d_model", "n_embd"))
    if hidden is None:
        return None
    ffn = _first_int(config, ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner", "encoder_ffn_dim")) or 4 * hidden
    heads = _first_int(config, ("num_attention_heads", "n_heads", "n_head", "encoder_attention_heads")) or 1
    tokens = batch * seq
    residual = 2 * FLOAT * tokens * hidden
    feed_forward = FLOAT * tokens * ffn + tokens * ffn          # fp32 activation and its dynamic int8 copy
    attention = 3 * FLOAT * tokens * hidden + FLOAT * batch * heads * seq * seq
    return residual + max(feed_forward, attention)


def on_host(session) -> bool:
    """Whether ``session`` keeps its activations in this machine's memory (ONNX Runtime on the CPU, PyTorch)."""
    backend = getattr(session, "backend", "")
    providers = getattr(session, "providers", None) or ["CPUExecutionProvider"]
    return backend == "pytorch" or (backend == "onnxruntime" and providers[0] == "CPUExecutionProvider")


def check_rows_fit(encoder, texts: list[str], batch: int, seq_len: int | None = None,
                   flag: str = "--batch-size") -> None:
    """``check_batch_fits`` for batches of ``texts`` as ``encoder`` makes them: ``seq_len`` tokens each, else padded
    to the longest text (tokenized only when the model's whole length would not clearly fit)."""
    config, free = read_config(encoder.folder), available_bytes()
    if seq_len is None:
        whole = activation_bytes(config, batch, encoder.max_length)
        if whole is None or free is None or whole * PEAK_FACTOR <= free:
            return
    _check(config, free, encoder.folder, batch, seq_len or max(encoder.token_lengths(texts)), flag)


def check_batch_fits(folder: str | Path, batch: int, seq: int, flag: str = "--batch-size") -> None:
    """An InputError when ``batch`` rows of ``seq`` tokens need more memory than the system has available (by the
    lower bound); a warning on stderr when they may (by the bound times PEAK_FACTOR)."""
    _check(read_config(Path(folder)), available_bytes(), folder, batch, seq, flag)


def _check(config: dict, free: int | None, folder, batch: int, seq: int, flag: str) -> None:
    needed = activation_bytes(config, batch, seq)
    if needed is None or free is None or needed * PEAK_FACTOR <= free:
        return
    per_row = activation_bytes(config, 1, seq) or 1
    if needed > free:
        fits = free // per_row
        fix = (f"Pass a far smaller {flag}: under {fits} by this bound, which a run's real peak exceeds several times"
               if fits >= 1 else "Free memory, or time a shorter --seq-len")
        raise InputError(f"{flag} {batch} at {seq} tokens needs at least {needed / GIB:.1f} GiB of memory for the "
                         f"model's activations", f"{free / GIB:.1f} GiB is available; the run would be killed for lack "
                         "of memory", fix)
    if (str(folder), batch, seq) in _warned:  # once a run: check evaluates the original and the candidate alike
        return
    _warned.add((str(folder), batch, seq))
    progress.echo(f"WARNING: {flag} {batch} at {seq} tokens may need about {needed * PEAK_FACTOR / GIB:.1f} GiB of "
                  f"memory, and {free / GIB:.1f} GiB is available; if the run is killed for lack of memory, pass "
                  f"{flag} {max(1, free // (per_row * PEAK_FACTOR))} or less")
