"""Load test for examples/classify_server.py on loopback: N concurrent keep-alive clients for a bounded time.

Each client thread holds one HTTP/1.1 connection (``http.client``, standard library) and sends
``POST /classify {"texts": [one sentence]}`` back to back until ``--seconds`` pass or ``--requests``
are sent in all. A failed request (an exception, or any status but 200) is counted with its reason and
the client reconnects. The result: requests, failures, p50/p90/p99/max latency, requests/s, load
average before and after, and the command that produced it.

    # start the server itself (port 0 = a free one) on an optimize artifact, 32 clients x 60 s:
    python bench/serve/load.py --artifact /tmp/art --max-wait-ms 5 --record bench/serve/results.md
    # or drive a server that already runs:
    python bench/serve/load.py --url http://127.0.0.1:8000 --clients 8 --seconds 10
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import select
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "examples" / "classify_server.py"
FALLBACK_TEXTS = ["a gripping, funny film", "dull and far too long", "the acting was superb but the plot dragged",
                  "one of the best films of the year", "i walked out halfway through"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Drive classify_server.py with concurrent keep-alive clients.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--artifact", help="start examples/classify_server.py on this artifact (loopback, free port)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="with --artifact: the server's dynamic batcher wait (default 5; 0 = no batcher)")
    p.add_argument("--server-threads", type=int, default=None, help="with --artifact: the server's --threads")
    p.add_argument("--clients", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    p.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long (default 60)")
    p.add_argument("--requests", type=int, default=1_000_000, help="stop after this many requests in all")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"),
                   help="label<TAB>sentence file to draw texts from (default ../shared SST-2 dev; "
                        "built-in sentences when missing)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request socket timeout in seconds")
    p.add_argument("--record", help="append the result as a Markdown section to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args(argv)


def load_texts(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return FALLBACK_TEXTS
    texts = [line.split("\t", 1)[1] for line in lines[1:] if "\t" in line]
    return texts or FALLBACK_TEXTS


class Budget:
    """Shared stop condition: a deadline and a request count, taken one request at a time."""

    def __init__(self, seconds: float, requests: int):
        self.deadline = time.monotonic() + seconds
        self.left = requests
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.monotonic() >= self.deadline:
                return False
            self.left -= 1
            return True


def client(url: str, texts: list[str], budget: Budget, timeout: float, seed: int, out: dict) -> None:
    parts = urlsplit(url)
    rng = random.Random(seed)
    conn, latencies, errors, connections = None, [], Counter(), 0
    while budget.take():
        body = json.dumps({"texts": [rng.choice(texts)]}).encode()
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
                connections += 1
            conn.request("POST", "/classify", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status != 200:
                errors[f"HTTP {resp.status}: {payload[:80]!r}"] += 1
            elif resp.will_close:
                errors["server closed a keep-alive connection"] += 1
                conn.close()
                conn = None
            else:
                latencies.append((time.perf_counter() - start) * 1000)
        except (OSError, http.client.HTTPException) as exc:
            errors[type(exc).__name__] += 1
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    out.update(latencies=latencies, errors=errors, connections=connections)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def run_load(url: str, texts: list[str], clients: int, seconds: float, requests: int, timeout: float) -> dict:
    budget = Budget(seconds, requests)
    results = [{} for _ in range(clients)]
    threads = [threading.Thread(target=client, args=(url, texts, budget, timeout, i, results[i]), daemon=True)
               for i in range(clients)]
    load_before = os.getloadavg()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 30)
    wall = time.perf_counter() - start
    lat = sorted(x for r in results for x in r.get("latencies", []))
    errors = sum((r.get("errors", Counter()) for r in results), Counter())
    ok, failed = len(lat), sum(errors.values())
    return {"clients": clients, "send_seconds": seconds, "seconds": round(wall, 2), "requests": ok + failed, "ok": ok, "failed": failed,
            "errors": dict(errors), "connections": sum(r.get("connections", 0) for r in results),
            "unfinished_clients": sum(t.is_alive() for t in threads),
            "latency_ms": {f"p{q}": round(percentile(lat, q), 2) for q in (50, 90, 99)}
            | {"max": round(lat[-1], 2) if lat else None},
            "requests_per_s": round(ok / wall, 1), "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count()}


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, str(SERVER), args.artifact, "--host", "127.0.0.1", "--port", "0",
           "--max-wait-ms", str(args.max_wait_ms)]
    if args.server_threads:
        cmd += ["--threads", str(args.server_threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if "listening on http://" in line:
                return proc, line.split("listening on ")[1].split()[0]
    proc.kill()
    raise SystemExit(f"Error: the server did not start (exit {proc.poll()}); run it by hand to see why")


def markdown(result: dict, command: str, server: str) -> str:
    lat = result["latency_ms"]
    ratio = lat["p99"] / lat["p50"] if lat["p50"] else float("nan")
    return "\n".join([
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {result['clients']} clients x "
        f"{result['send_seconds']:g} s", "", "```bash", command, "```", "",
        f"- Server: {server}",
        f"- Requests: {result['requests']} ({result['ok']} ok, **{result['failed']} failed**"
        + (f": {result['errors']}" if result["errors"] else "") + f"), {result['connections']} connections opened",
        f"- Latency ms: p50 {lat['p50']}, p90 {lat['p90']}, p99 {lat['p99']}, max {lat['max']} "
        f"(p99/p50 = {ratio:.2f})",
        f"- Throughput: {result['requests_per_s']} requests/s over {result['seconds']} s wall (sending stops at "
        f"{result['send_seconds']:g} s; requests in flight then are waited for)",
        f"- Machine: {result['cores']} cores; load average (1/5/15 min) before {result['load_average_before']}, "
        f"after {result['load_average_after']} (shared with other work; the client runs on the same cores)",
        "", ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = load_texts(args.data)
    proc, url = (start_server(args) if args.artifact else (None, args.url))
    server = (f"examples/classify_server.py {Path(args.artifact).name} --max-wait-ms {args.max_wait_ms}"
              if args.artifact else url)
    try:
        result = run_load(url, texts, args.clients, args.seconds, args.requests, args.timeout)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/serve/load.py", *(argv or sys.argv[1:])])
    text = markdown(result, command, server)
    if args.record:
        with open(args.record, "a", encoding="utf-8") as f:
            f.write(text)
    print(json.dumps(result, indent=2) if args.json else text, end="" if not args.json else "\n")
    return 0 if result["failed"] == 0 and result["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
