"""Report figures as PNG bytes (matplotlib's Agg canvas; pyplot and the global backend are left alone).

Each function takes normalized rows or sweeps (see report_runs) and returns
``(title, caption, png_bytes)`` or None when it has nothing to draw.
"""

from __future__ import annotations

import io
import textwrap

from .deps import require

PERCENTILES = ("p50", "p90", "p95", "p99")
DPI = 100


def figures(rows: list[dict], sweeps: list[dict]) -> list[tuple[str, str, bytes]]:
    """Every figure the data supports, in report order."""
    measured = [r for r in rows if r["status"] == "ok" and r["latency_ms"]]
    found = [latency_distribution(measured), latency_percentiles(measured), accuracy_vs_latency(measured)]
    found += [sweep_curves(s) for s in sweeps]
    return [f for f in found if f is not None]


def _figure(width: float, height: float):
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _label(name: str) -> str:
    return "\n".join(textwrap.wrap(name, 28)) or "?"


def latency_distribution(rows: list[dict]):
    """Box plot of per-run samples (whiskers at the 1st and 99th percentile)."""
    rows = [r for r in rows if r.get("samples_ms")]
    if not rows:
        return None
    fig = _figure(8, 1.2 + 0.7 * len(rows))
    ax = fig.add_subplot()
    ax.boxplot([r["samples_ms"] for r in rows], orientation="horizontal", whis=(1, 99), showfliers=False,
               tick_labels=[_label(r["name"]) for r in rows])
    for i, r in enumerate(rows, start=1):
        if (r["latency_ms"] or {}).get("p99") is not None:
            ax.plot([r["latency_ms"]["p99"]], [i], marker="|", markersize=14, color="tab:red")
    _log_if_wide(ax, [t for r in rows for t in r["samples_ms"]], axis="x")
    ax.invert_yaxis()
    ax.set_xlabel("latency per run (ms)")
    ax.grid(axis="x", alpha=0.3)
    return ("Latency distribution", "Per-run latency samples: box = quartiles, whiskers = 1st-99th percentile, "
            "red tick = p99.", _png(fig))


def latency_percentiles(rows: list[dict]):
    """Grouped bars of p50/p90/p95/p99 for every measured row that has all four (interleaved peers tables keep
    p50/p90/mean only), on a linear axis from zero, each bar labelled."""
    rows = [r for r in rows if all((r["latency_ms"] or {}).get(k) is not None for k in PERCENTILES)]
    if not rows:
        return None
    fig = _figure(9, 1.6 + 1.0 * len(rows))
    ax = fig.add_subplot()
    height = 0.8 / len(PERCENTILES)
    top = max(r["latency_ms"][k] for r in rows for k in PERCENTILES)
    for j, key in enumerate(PERCENTILES):
        ys = [i + j * height for i in range(len(rows))]
        bars = ax.barh(ys, [r["latency_ms"][key] for r in rows], height=height, label=key)
        ax.bar_label(bars, labels=[_ms_label(r["latency_ms"][key]) for r in rows], padding=3, fontsize="x-small")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))], [_label(r["name"]) for r in rows])
    ax.set_xlim(0, top * 1.15)  # bars start at zero; room for the value labels
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms), linear axis from 0")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return "Latency percentiles", "p50, p90, p95 and p99 of every measured artifact (ms; value at each bar).", \
        _png(fig)


def _ms_label(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def accuracy_vs_latency(rows: list[dict]):
    """Accuracy against p50 latency, one labeled point per artifact that has both."""
    rows = [r for r in rows if r.get("accuracy") is not None]
    if not rows:
        return None
    fig = _figure(8, 4.5 + 0.25 * len(rows))
    ax = fig.add_subplot()
    markers = "osD^v<>PX*"
    for i, r in enumerate(rows):
        ax.scatter([r["latency_ms"]["p50"]], [r["accuracy"]], s=60, marker=markers[i % len(markers)],
                   label=r["name"])
    _log_if_wide(ax, [r["latency_ms"]["p50"] for r in rows], axis="x")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("p50 latency (ms), lower is better")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    return ("Accuracy vs latency", "Each point is one artifact: up and to the left is better.", _png(fig))


def sweep_curves(sweep: dict):
    """p50 latency and throughput against batch size, one line per sequence length (or against length)."""
    points = sweep["points"]
    if not points:
        return None
    batches = sorted({p["batch_size"] for p in points})
    seqs = sorted({p["seq_len"] for p in points}, key=lambda s: (s is not None, s or 0))
    by_batch = len(batches) > 1
    fig = _figure(10, 4)
    lat_ax, thr_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for series in (seqs if by_batch else batches):
        sel = [p for p in points if (p["seq_len"] if by_batch else p["batch_size"]) == series]
        sel.sort(key=lambda p: p["batch_size"] if by_batch else (p["tokens_mean"] or 0))
        xs = [p["batch_size"] if by_batch else p["tokens_mean"] for p in sel]
        label = (f"seq {series or 'real'}" if by_batch else f"batch {series}")
        lat_ax.plot(xs, [p["latency_ms"]["p50"] for p in sel], marker="o", label=label)
        thr_ax.plot(xs, [p["throughput_per_s"] for p in sel], marker="o", label=label)
    for ax, ylabel in ((lat_ax, "p50 latency (ms)"), (thr_ax, "throughput (items/s)")):
        ax.set_xlabel("batch size" if by_batch else "tokens per input")
        ax.set_ylabel(ylabel)
        if by_batch:
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(sweep["name"], fontsize="medium")
    return (f"Sweep: {sweep['name']}", "p50 latency and throughput across the grid.", _png(fig))


def _log_if_wide(ax, values: list[float], axis: str) -> None:
    """A log axis when values span over 10x, with plain-number labels at 1-2-5 steps and no minor labels."""
    positive = [v for v in values if v > 0]
    if not positive or max(positive) / min(positive) <= 10:
        return
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(StrMethodFormatter("{x:g}"))
    target.set_minor_formatter(NullFormatter())
