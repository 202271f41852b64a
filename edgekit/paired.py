"""Speed ratios that survive load: two or more sessions timed in interleaved rounds on the same inputs.

Timing A, then B, lets load that arrives in between land on one side only (a
competing process once turned a 3.9x speedup into a reported 42x). Here every
round times each session on the *same* inputs (A B, then
B A next round, so neither always goes first), and the ratio is taken per
round: load that lasts a round hits both sides. The result gives each
artifact's p50 over all its runs, and for each candidate the ratio
``baseline p50 / candidate p50`` (higher = candidate faster) as the median of
the per-round ratios with their interquartile range; a run whose ratio IQR is
wide relative to the ratio is flagged ``unstable``.

Library use (what ``optimize`` and ``bench A B`` call)::

    from edgekit.paired import PairedOptions, compare
    result = compare({"original": hf_folder, "optimized": onnx_folder}, data="dev.tsv")
    result["ratios"]["optimized"]   # {"ratio": 3.9, "iqr": [3.7, 4.1], "spread": 0.10, "unstable": False}
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import progress
from .errors import InputError

SCHEMA = "edgekit.paired/1"
UNSTABLE_SPREAD = 0.15   # ratio IQR / ratio above this flags the run unstable


@dataclass
class PairedOptions:
    """Interleaved timing: ``rounds`` rounds; in each, every session runs the same ``runs`` inputs."""

    batch_size: int = 1
    seq_len: int | None = None        # None = real sentence lengths; N = real text cut to N tokens
    rounds: int = 15
    runs: int = 5                     # timed runs per session per round (the same inputs for every session)
    warmup: int = 5                   # untimed runs per session before the first round
    threads: int | None = None        # intra-op threads, the same for every session; None = usable cores
    samples: int = 256                # sentences drawn from the data (seeded)
    unstable_spread: float = UNSTABLE_SPREAD

    def validate(self) -> None:
        for name in ("batch_size", "rounds", "runs", "samples"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', ' ')} must be at least 1", f"got {getattr(self, name)}", None)
        if self.rounds < 4:
            raise InputError(f"Interleaved timing needs at least 4 rounds, got {self.rounds}",
                             "the ratio's interquartile range is taken over rounds", "Use rounds >= 4")
        if self.warmup < 0:
            raise InputError("warmup must be >= 0", f"got {self.warmup}", None)
        from .bench import check_shape_and_threads  # noqa: PLC0415  (bench imports this module)

        check_shape_and_threads(self.seq_len, self.threads)


def interleaved(runs: dict[str, Callable[[int], None]], options: PairedOptions) -> dict[str, list[list[float]]]:
    """Per name, per round, the ms of each run. ``runs[name](i)`` runs input ``i`` (the same i for every name)."""
    names = list(runs)
    for name in names:
        for i in range(options.warmup):
            runs[name](i)
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in progress.bar(range(options.rounds), desc="interleaved rounds", unit="round"):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:  # every session runs the same inputs this round
            samples = []
            for i in range(r * options.runs, (r + 1) * options.runs):
                t0 = time.perf_counter()
                runs[name](i)
                samples.append((time.perf_counter() - t0) * 1000.0)
            times[name].append(samples)
    return times


def summarize(times: dict[str, list[list[float]]], baseline: str, batch_size: int,
              unstable_spread: float = UNSTABLE_SPREAD) -> dict:
    """Per-artifact p50 / throughput over all runs; per candidate, the per-round p50 ratio's median and IQR."""
    per = {}
    for name, rounds in times.items():
        flat = np.concatenate([np.asarray(r) for r in rounds])
        per[name] = {"p50_ms": float(np.median(flat)), "p90_ms": float(np.percentile(flat, 90)),
                     "mean_ms": float(flat.mean()), "runs": int(flat.size),
                     "throughput_per_s": 1000.0 * batch_size / float(flat.mean()),
                     "round_p50_ms": [round(float(np.median(r)), 4) for r in rounds]}
    ratios = {name: pair_ratio(per, baseline, name, unstable_spread) for name in per if name != baseline}
    return {"baseline": baseline, "artifacts": per, "ratios": ratios}


def pair_ratio(artifacts: dict, baseline: str, candidate: str, unstable_spread: float = UNSTABLE_SPREAD) -> dict:
    """``baseline p50 / candidate p50`` per round (higher = candidate faster): median, IQR, spread, unstable."""
    base, cand = artifacts[baseline], artifacts[candidate]
    r = np.asarray(base["round_p50_ms"]) / np.asarray(cand["round_p50_ms"])
    median, q25, q75 = (float(np.percentile(r, q)) for q in (50, 25, 75))
    spread = (q75 - q25) / median if median else float("inf")
    return {"ratio": median, "iqr": [q25, q75], "spread": spread, "unstable": spread > unstable_spread,
            "ratio_of_p50s": base["p50_ms"] / cand["p50_ms"],
            "throughput_ratio": cand["throughput_per_s"] / base["throughput_per_s"]}


def paired_sessions(sessions: dict[str, object], encoder, texts: list[str], options: PairedOptions,
                    baseline: str | None = None) -> dict:
    """Interleaved timing of open sessions (model-only: ``session.run`` on pre-tokenized batches of ``texts``)."""
    from .bench import texts_of_length
    from .memory import check_rows_fit, on_host

    options.validate()
    if len(sessions) < 2:
        raise InputError("Interleaved timing needs two or more sessions", f"got {len(sessions)}", None)
    if any(on_host(s) for s in sessions.values()):
        check_rows_fit(encoder, texts, options.batch_size, options.seq_len)
    if options.seq_len:
        texts = texts_of_length(encoder, texts, options.seq_len)
    size = options.batch_size
    texts = texts * -(-size // len(texts))
    batches = [encoder(texts[i:i + size], pad_to=options.seq_len) for i in range(0, len(texts) - size + 1, size)]
    feeds = {name: [s.feeds(b) for b in batches] for name, s in sessions.items()}
    runs = {name: (lambda i, s=s, f=feeds[name]: s.run(f[i % len(f)])) for name, s in sessions.items()}
    load_before = _load()
    times = interleaved(runs, options)
    result = summarize(times, baseline or next(iter(sessions)), size, options.unstable_spread)
    result.update(schema=SCHEMA, options=asdict(options), load_average_before=load_before, load_average_after=_load(),
                  tokens_mean=float(np.mean([b["attention_mask"].sum(1).max() for b in batches])))
    result["warnings"] = paired_warnings(result)
    return result


def compare(artifacts: dict[str, str | Path], data: str | Path | None = None, options: PairedOptions | None = None,
            text_column: str | None = None, encoder_from: str | Path | None = None) -> dict:
    """Open each artifact (HF folder, ONNX or engine) and time them interleaved; the first is the baseline.

    The encoder (tokenizer) is the first artifact's unless ``encoder_from`` is
    given; every session gets the same threads and the same token ids.
    """
    from .artifact import resolve
    from .bench import _texts
    from .runtime.session import default_threads
    from .sessions import check_same_tokenizer, encoder_for, session_for

    options = options or PairedOptions()
    options.validate()
    arts = {name: resolve(path) for name, path in artifacts.items()}
    first = next(iter(arts.values()))
    from .tasks import task_of  # noqa: PLC0415

    tasks = {name: task_of(art.folder) for name, art in arts.items()}
    if len(set(tasks.values())) > 1:  # their outputs differ in kind: a ratio between them compares nothing
        raise InputError("Interleaved timing compares artifacts of one model and task",
                         f"these are {', '.join(f'{n} {t}' for n, t in tasks.items())}",
                         "Bench each on its own, or compare artifacts made from the same model")
    encoder = encoder_for(resolve(encoder_from) if encoder_from else first)
    check_same_tokenizer(encoder, arts)
    if options.seq_len and options.seq_len > encoder.max_length:
        raise InputError(f"--seq-len {options.seq_len} is longer than the model takes",
                         f"its limit is {encoder.max_length} tokens", f"Use --seq-len <= {encoder.max_length}")
    texts = _texts(data, text_column, options.samples)
    threads = options.threads or default_threads()
    with contextlib.ExitStack() as stack:
        sessions = {name: stack.enter_context(session_for(art, threads)) for name, art in arts.items()}
        result = paired_sessions(sessions, encoder, texts, options)
        backends = {name: s.backend for name, s in sessions.items()}
    result.update(kind="paired", threads=threads, data=str(data) if data is not None else "built-in sentences",
                  paths={name: str(art.path) for name, art in arts.items()}, backends=backends)
    return result


#: fewest timed runs per artifact for a p50 that means something (bench's MIN_RUNS)
MIN_PAIRED_RUNS = 10
MIN_SPREAD_ROUNDS = 8     # an interquartile range over fewer rounds rests on one or two values each side


def paired_warnings(result: dict) -> list[str]:
    found = []
    runs = min((a["runs"] for a in result["artifacts"].values()), default=0)
    if runs < MIN_PAIRED_RUNS:
        found.append(f"only {runs} timed runs per artifact: too few for a p50 to mean anything; use more --rounds")
    rounds = result["options"]["rounds"]
    if rounds < MIN_SPREAD_ROUNDS:
        found.append(f"the ratios' IQRs are over only {rounds} rounds: use --rounds {MIN_SPREAD_ROUNDS} or more for a "
                     "spread to rely on")
    for name, r in result["ratios"].items():
        if r["unstable"]:
            found.append(f"unstable ratio for {name}: {r['ratio']:.2f}x with IQR {r['iqr'][0]:.2f}-{r['iqr'][1]:.2f}"
                         f" over {len(result['artifacts'][name]['round_p50_ms'])} rounds (spread {r['spread']:.0%});"
                         " rerun on a quieter machine")
    from .bench import _usable_cores

    load, cores = result.get("load_average_before"), _usable_cores()
    if load is not None and load > cores:
        found.append(f"busy machine: 1-minute load average {load:.1f} on {cores} usable cores; ratios are interleaved "
                     "but absolute ms are not quiet-machine figures")
    return found


def format_paired(result: dict) -> str:
    """Human summary: one line per artifact, the ratio with its IQR per candidate, warnings last."""
    o = result["options"]
    lines = [f"interleaved: {o['rounds']} rounds, batch {o['batch_size']}, seq {o['seq_len'] or 'real'}, "
             f"{result.get('threads', '?')} threads, load average {result['load_average_before']}"]
    for name, a in result["artifacts"].items():
        line = f"  {name}: p50 {a['p50_ms']:.2f} ms, {a['throughput_per_s']:.1f} items/s ({a['runs']} runs)"
        r = result["ratios"].get(name)
        if r:
            line += (f"  -> {r['ratio']:.2f}x vs {result['baseline']} (IQR {r['iqr'][0]:.2f}-{r['iqr'][1]:.2f}"
                     f"{', UNSTABLE' if r['unstable'] else ''})")
        lines.append(line)
    lines += [f"WARNING: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
