"""Choose the CPU int8 variant by measurement on the machine that quantizes.

Candidates, all for ONNX Runtime's CPU provider (QOperator; QDQ is left out:
measured 7x slower than fp32 on this provider's CPU path):

* ``dynamic``: u8 activations quantized on the fly, s8 weights (MatMulInteger,
  QAttention), per-channel or per-tensor weights;
* ``dynamic`` with ``reduce_range`` (7-bit weights): on CPUs without VNNI
  the u8 x s8 AVX2 kernel can saturate its 16-bit sums, 7-bit weights avoid it;
* ``static`` QOperator u8s8 (QLinearMatMul) calibrated on real sentences, when
  calibration data is at hand and the mode is left to edgekit.

Each candidate is built, checked against the fp32 graph on real sentences
(argmax agreement, mean |logit difference|) and timed against the default in
interleaved rounds (:mod:`edgekit.paired`), a few seconds in all. The fastest
candidate that matches fp32 as closely as the best one wins; the default
stays unless another is clearly faster. The CPU's int8 flags, every
candidate's figures and the reason go into the manifest.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .environment import cpu_info
from .paired import PairedOptions, paired_sessions

MIN_GAIN = 1.05          # another variant replaces the default only when this much faster (median ratio)
ERROR_SLACK = 1.5        # ...and its mean |logit diff| vs fp32 is within this factor of the best candidate's
TIMING = PairedOptions(rounds=8, runs=8, warmup=3, samples=32)


def cpu_int8_flags() -> dict:
    flags = cpu_info()["flags"]
    return {"vnni": bool(flags.get("avx512_vnni") or flags.get("avx_vnni")), "amx_int8": bool(flags.get("amx_int8")),
            "avx512": bool(flags.get("avx512f")), "avx2": bool(flags.get("avx2"))}


def candidates(options, static_ok: bool) -> dict[str, dict]:
    """Name -> {mode, per_channel, reduce_range} for the variants worth timing."""
    found = {"dynamic": {"mode": "dynamic", "per_channel": options.per_channel, "reduce_range": False},
             "dynamic-reduce-range": {"mode": "dynamic", "per_channel": options.per_channel, "reduce_range": True},
             f"dynamic-per-{'tensor' if options.per_channel else 'channel'}":
                 {"mode": "dynamic", "per_channel": not options.per_channel, "reduce_range": False}}
    if static_ok:
        found["static-qoperator-u8s8"] = {"mode": "static", "per_channel": options.per_channel, "reduce_range": False}
    return found


def choose(fp32: Path, built: dict[str, Path], folder: Path, texts: list[str], threads: int | None = None) -> dict:
    """Compare built int8 variants (name -> model file; the first is the default) with fp32 and each other."""
    from .runtime.session import OrtSession
    from .runtime.tokenizer import TextEncoder

    encoder = TextEncoder(folder)
    names = list(built)
    sessions = {name: OrtSession(path, threads=threads).open() for name, path in built.items()}
    try:
        with OrtSession(fp32, threads=threads) as ref:
            want = [ref.run(ref.feeds(encoder([t])))[ref.output_names[0]] for t in texts]
        fidelity = {name: _fidelity(s, encoder, texts, want) for name, s in sessions.items()}
        timing = paired_sessions(sessions, encoder, texts, replace(TIMING, threads=threads), baseline=names[0])
    finally:
        for s in sessions.values():
            s.close()
    return decide(names[0], fidelity, timing)


def decide(default: str, fidelity: dict[str, dict], timing: dict) -> dict:
    """The choice and its reason from fidelity (vs fp32) and interleaved timing (ratio vs the default)."""
    best_error = min(f["mean_abs_logit_diff"] for f in fidelity.values())
    best_agree = max(f["argmax_agreement"] for f in fidelity.values())
    table = {}
    for name, f in fidelity.items():
        r = timing["ratios"].get(name, {"ratio": 1.0, "iqr": [1.0, 1.0], "unstable": False})
        close = (f["mean_abs_logit_diff"] <= ERROR_SLACK * best_error + 1e-6
                 and f["argmax_agreement"] >= best_agree - 0.02)
        table[name] = {**f, "speedup_vs_default": round(r["ratio"], 4), "iqr": [round(x, 4) for x in r["iqr"]],
                       "unstable": r["unstable"], "p50_ms": round(timing["artifacts"][name]["p50_ms"], 4),
                       "matches_fp32": close}
    eligible = [n for n in table if n != default and table[n]["matches_fp32"] and not table[n]["unstable"]
                and table[n]["iqr"][0] >= MIN_GAIN]
    chosen = max(eligible, key=lambda n: table[n]["speedup_vs_default"]) if eligible else default
    if chosen != default:
        reason = (f"{chosen} ran {table[chosen]['speedup_vs_default']:.2f}x the default (IQR "
                  f"{table[chosen]['iqr'][0]:.2f}-{table[chosen]['iqr'][1]:.2f}) and matches fp32 as closely")
    elif not table[default]["matches_fp32"]:
        reason = f"{default} kept: the default; no faster variant matched fp32 as closely"
    else:
        reason = f"{default} kept: no variant was >= {MIN_GAIN:.2f}x faster (lower IQR bound) at equal fidelity"
    return {"chosen": chosen, "reason": reason, "candidates": table, "load_average": timing["load_average_before"],
            "timing": {k: timing["options"][k] for k in ("rounds", "runs")}}


def _fidelity(session, encoder, texts: list[str], want: list[np.ndarray]) -> dict:
    got = [session.run(session.feeds(encoder([t])))[session.output_names[0]] for t in texts]
    diff = float(np.mean([np.abs(g - w).mean() for g, w in zip(got, want)]))
    # per example (classification) or per token (token classification): the share of equal argmaxes
    agree = float(np.mean([float((g.argmax(-1) == w.argmax(-1)).mean()) for g, w in zip(got, want)]))
    return {"mean_abs_logit_diff": round(diff, 6), "argmax_agreement": round(agree, 4)}

