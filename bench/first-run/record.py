"""Record the README's main job as a new user sees it, quiet and under one competing CPU-bound process.

    python bench/first-run/record.py --clean       # -> bench/first-run.md (+ frames in bench/first-run/)

Each run types the README's main-job command (``edgekit optimize --recipe models/minilm-l6-sst2.yaml``,
the venv already installed) into a real terminal: a detached tmux session, 132 x 40, whose screen is
captured every 0.25 s. Distinct screens are kept with their time, so the bars (drawn only on a terminal)
are in the recording, not just the lines that stay. Each run starts with an empty step cache
(``EDGEKIT_CACHE`` in a temporary folder), as on a fresh machine.

The second run starts one CPU-bound process (``python -c 'while True: pass'``) itself, waits for it to
be running, and stops it when the run ends. The file records both runs' totals, final lines, and the
interleaved speedup each reported, and whether the loaded figure is within 25% of the quiet one or the
final line carries a warning (issue 12 and 13's condition).

The command writes into ``out/minilm-l6-sst2`` (the recipe's ``out:``); ``--clean`` lets this script
remove a folder already there (without it the script refuses to touch it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgekit.report import environment_lines

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "edgekit optimize --recipe models/minilm-l6-sst2.yaml"
OUT = ROOT / "out" / "minilm-l6-sst2"
SESSION = "edgekit-first-run"
DONE = "[first-run: exit "
WIDTH, HEIGHT = 132, 40
LIMIT_S = 1800


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clean", action="store_true", help=f"remove {OUT.relative_to(ROOT)} before each run")
    p.add_argument("--venv", type=Path, default=ROOT / ".venv", help="the installed venv the command runs in")
    p.add_argument("--md", type=Path, default=ROOT / "bench" / "first-run.md")
    p.add_argument("--frames", type=Path, default=ROOT / "bench" / "first-run")
    p.add_argument("--only", choices=("quiet", "competing"), help="one of the two runs (the file then has one)")
    return p.parse_args(argv)


def tmux(*args: str, check: bool = True) -> str:
    return subprocess.run(["tmux", *args], check=check, capture_output=True, text=True).stdout


def record(venv: Path, cache: Path) -> dict:
    """Run COMMAND in a fresh tmux terminal; every distinct screen (with scrollback) and the time it appeared."""
    tmux("kill-session", "-t", SESSION, check=False)
    shell = (f"cd {ROOT} && . {venv}/bin/activate && export EDGEKIT_CACHE={cache} && clear && "
             f"echo '$ {COMMAND}' && {COMMAND}; echo \"{DONE}$?]\"; sleep 3600")
    tmux("new-session", "-d", "-s", SESSION, "-x", str(WIDTH), "-y", str(HEIGHT), "bash", "-c", shell)
    started, frames, last, final = time.perf_counter(), [], None, []
    try:
        while time.perf_counter() - started < LIMIT_S:
            screen = tmux("capture-pane", "-p", "-J", "-t", SESSION).rstrip()  # the visible 40 lines
            if screen != last:
                frames.append({"t": round(time.perf_counter() - started, 2), "screen": screen})
                last = screen
            if DONE in screen:
                final = tmux("capture-pane", "-p", "-J", "-t", SESSION, "-S", "-500").rstrip().splitlines()
                break
            time.sleep(0.25)
    finally:
        tmux("kill-session", "-t", SESSION, check=False)
    code = next((line[len(DONE):].rstrip("]") for line in final if line.startswith(DONE)), None)
    result_lines = [line for line in final if line.startswith(("PASSED", "FAILED", "Error"))]
    return {"frames": frames, "exit": code, "final_line": result_lines[-1] if result_lines else None,
            "wall_s": frames[-1]["t"] if frames else None, "final_screen": final}


def thin(frames: list[dict], every_s: float) -> list[dict]:
    kept: list[dict] = []
    for f in frames:
        if not kept or f["t"] - kept[-1]["t"] >= every_s or f is frames[-1]:
            kept.append(f)
    return kept


def bar_frames(frames: list[dict], keep: int = 10) -> list[dict]:
    """Screens with a progress bar on them (tqdm draws `|###   |`), spread over the run."""
    with_bar = [f for f in frames if "%|" in f["screen"]]
    if len(with_bar) <= keep:
        return with_bar
    step = len(with_bar) / keep
    return [with_bar[int(i * step)] for i in range(keep)]


def run_once(name: str, args) -> dict:
    if OUT.exists():
        if not args.clean:
            sys.exit(f"{OUT} exists: pass --clean to let this script remove it before each run")
        shutil.rmtree(OUT)
    competing = None
    if name == "competing":
        competing = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(2.0)
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-first-run-cache-") as cache:
            rec = record(args.venv, Path(cache))
    finally:
        if competing is not None:
            competing.kill()
            competing.wait()
    report = json.loads((OUT / "report.json").read_text()) if (OUT / "report.json").is_file() else {}
    (args.frames / f"frames-{name}.txt").write_text(  # one screen per second at most: a file to read, not a video
        "".join(f"=== t={f['t']:.2f} s ===\n{f['screen']}\n" for f in thin(rec["frames"], 1.0)), encoding="utf-8")
    speed = report.get("speedup") or {}
    return {**rec, "name": name, "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "speedup_p50": report.get("speedup_p50"),
            "iqr": speed.get("iqr"), "unstable": speed.get("unstable"), "warnings": report.get("warnings") or [],
            "seconds_total": report.get("seconds_total"), "stages": report.get("stages") or [],
            "environment": report.get("environment") or {}}


def commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def section(r: dict) -> list[str]:
    title = "Quiet machine" if r["name"] == "quiet" else "Under one competing CPU-bound process"
    lines = [f"## {title}", "",
             f"Load average before {r['load_before']}, after {r['load_after']} (1, 5, 15 min). Exit code "
             f"{r['exit']}; wall time {r['wall_s']} s from the command typed to its last line "
             f"(report.json `seconds_total` {r['seconds_total']}).", "",
             "Stages (report.json): " + ", ".join(f"{s.get('name')} {s.get('seconds')} s" for s in r["stages"]), "",
             "Final screen (bars are drawn with `leave=False`: they disappear when their loop ends):", "", "```text",
             *r["final_screen"], "```", "", "Screens with a bar on them, as they appeared "
             f"(a screen a second is in `bench/first-run/frames-{r['name']}.txt`):", ""]
    for f in bar_frames(r["frames"]):
        bars = [line for line in f["screen"].splitlines() if "%|" in line or line.startswith("[edgekit]")][-4:]
        lines += [f"t = {f['t']:.1f} s:", "", "```text", *bars, "```", ""]
    return lines


def _iqr(r: dict) -> str:
    return f"{r['iqr'][0]:.2f}-{r['iqr'][1]:.2f}" if r.get("iqr") else "n/a"


def verdict(quiet: dict, loaded: dict) -> list[str]:
    if not quiet.get("speedup_p50") or not loaded.get("speedup_p50"):
        return ["No comparison: a run reported no speedup."]
    change = loaded["speedup_p50"] / quiet["speedup_p50"] - 1
    warned = "WARNING" in (loaded["final_line"] or "")
    ok = abs(change) <= 0.25 or warned
    return [f"Interleaved speedup (PyTorch eager / edgekit int8, p50): quiet **{quiet['speedup_p50']:.2f}x** "
            f"(IQR {_iqr(quiet)}), under one competing process **{loaded['speedup_p50']:.2f}x** (IQR {_iqr(loaded)}): "
            f"{change * 100:+.1f}% ({'within' if abs(change) <= 0.25 else 'outside'} 25%); the loaded run's final "
            f"line {'carries' if warned else 'carries no'} warning. Condition (within 25% or a visible warning): "
            f"**{'met' if ok else 'not met'}**."]


def main(argv=None) -> None:
    args = parse_args(argv)
    if shutil.which("tmux") is None:
        sys.exit("tmux is not installed: apt-get install tmux")
    args.frames.mkdir(parents=True, exist_ok=True)
    names = [args.only] if args.only else ["quiet", "competing"]
    runs = {}
    for name in names:
        print(f"[first-run] {name} run ...", file=sys.stderr, flush=True)
        runs[name] = run_once(name, args)
        print(f"[first-run] {name}: {runs[name]['wall_s']} s, {runs[name]['final_line']}", file=sys.stderr, flush=True)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# First run: the README's main job in a terminal", "",
             f"Recorded {now} at commit {commit()} on this project's 2-core CPU machine (no GPU), the venv installed "
             "by the README's main-job command beforehand, an empty step cache per run. Command, from the "
             "repository root:", "", "```bash", "python bench/first-run/record.py --clean", "```", "",
             "which types, in a fresh 132x40 tmux terminal:", "", "```bash", COMMAND, "```", ""]
    env = next((r["environment"] for r in runs.values() if r["environment"]), {})
    lines += [f"Machine (the quiet run's report.json): {environment_lines(env)[0]}", ""]
    if "quiet" in runs and "competing" in runs:
        lines += ["## Summary", "", f"- Quiet: {runs['quiet']['wall_s']} s (target <= 90 s), exit {runs['quiet']['exit']}.",
                  f"- Competing: {runs['competing']['wall_s']} s, exit {runs['competing']['exit']}.",
                  "- " + verdict(runs["quiet"], runs["competing"])[0], ""]
    for name in names:
        lines += section(runs[name])
    args.md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"[first-run] wrote {args.md}", file=sys.stderr)


if __name__ == "__main__":
    main()
