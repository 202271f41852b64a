"""examples/classify_server.py started as a real process on 127.0.0.1 with a free port, sent real HTTP requests.

Loopback only; each request has a timeout and the server is stopped (SIGTERM, then kill) in every case.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import check_http_refusal, http_refusal_cases, raw_http
from edgekit.runtime import load

SERVER = Path(__file__).resolve().parents[2] / "examples" / "classify_server.py"
TEXTS = ["a gripping , funny film", "dull", "", "the plot was long and boring but the acting was superb ."]


class Server:
    def __init__(self, artifact: Path, *extra: str):
        self.proc = subprocess.Popen([sys.executable, str(SERVER), str(artifact), "--host", "127.0.0.1", "--port", "0",
                                      *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url = self._wait_for_url(timeout=90)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if "listening on http://" in line:
                    return line.split("listening on ")[1].split()[0]
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()}")
        raise AssertionError("server did not start in time")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def classify(self, payload) -> tuple[int, object]:
        return self.request("POST", "/classify", json.dumps(payload).encode())

    def stop(self) -> tuple[int, str]:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def server(tiny_optimized):
    srv = Server(tiny_optimized)
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def test_classify_equals_load_predict(tiny_optimized):
    server = Server(tiny_optimized)
    try:
        _check_answers(server, tiny_optimized)
    finally:
        code, err = server.stop()
    assert code == 0 and "Traceback" not in err, err  # SIGTERM stops it cleanly


def _check_answers(server: Server, artifact: Path) -> None:
    status, health = server.request("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["labels"] == ["negative", "positive"]
    assert health["backend"] == "onnxruntime" and health["batching"] is False
    status, got = server.classify({"texts": TEXTS})
    assert status == 200 and got == load(artifact).predict(TEXTS)  # JSON floats round-trip exactly
    assert server.classify({"texts": []}) == (200, [])
    with ThreadPoolExecutor(max_workers=6) as pool:  # concurrent clients, each its own answer
        answers = list(pool.map(lambda t: server.classify({"texts": [t]}), TEXTS * 3))
    assert [a[1][0] for a in answers] == got * 3


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b'["a", "b"]', 400, 'JSON object {"texts"'),
    (b'{"text": "a"}', 400, 'JSON object {"texts"'),
    (b'{"texts": "a single string"}', 400, "not a string"),
    (b'{"texts": ["ok", 3]}', 400, "item 1 is a number"),
    (b'{"texts": ["ok", null]}', 400, "item 1 is null"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (json.dumps({"texts": ["x"] * 257}).encode(), 413, "over the limit of 256"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),  # was a RecursionError: connection dropped
    (b'{"texts": ["ok", "\\ud800"]}', 400, "Text 1 is not valid Unicode"),  # a lone surrogate: was 503
])
def test_bad_requests_get_one_line_errors(server, body, status, message):
    code, payload = server.request("POST", "/classify", body)
    assert code == status and message in payload["error"] and "\n" not in payload["error"]
    assert server.request("GET", "/health")[0] == 200  # the server is still up


def _raw(server: Server, data: bytes) -> bytes:
    """Send ``data`` on a fresh socket as it is; what the server answers until it closes (or 10 s)."""
    from urllib.parse import urlsplit

    return raw_http(urlsplit(server.url).port, data)


def test_a_malformed_length_is_a_400_and_ends_the_connection(server):
    """Content-Length '²' (a digit to isdigit, not to int) dropped the connection with a traceback; a chunked
    body after a 400 was read as the next request."""
    got = _raw(server, "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: ²\r\n\r\n{}".encode())
    assert got.startswith(b"HTTP/1.1 400") and b"Content-Length header" in got and got.count(b"HTTP/1.1") == 1
    got = _raw(server, b"POST /classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"f\r\n{\"texts\": [\"a\"]}\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400") and got.count(b"HTTP/1.1") == 1  # closed: nothing parsed from the body
    assert server.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("request_line,status,needle", http_refusal_cases("/classify"))
def test_other_methods_and_malformed_requests_get_json(server, request_line, status, needle):
    """http.server answered these with its HTML error page (501 for PUT/DELETE)."""
    from urllib.parse import urlsplit

    check_http_refusal(urlsplit(server.url).port, request_line, status, needle)


def test_unknown_routes_and_startup_errors(server, tmp_path):
    assert server.request("GET", "/classify")[0] == 404
    assert server.request("POST", "/predict", b"{}")[0] == 404
    bad = subprocess.run([sys.executable, str(SERVER), str(tmp_path), "--port", "0"], capture_output=True, text=True,
                         timeout=60)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 1 and "missing config.json, tokenizer.json, model.onnx" in lines[0]
    for flag, value in (("--port", "70000"), ("--max-texts", "-1"), ("--max-wait-ms", "nan")):
        bad = subprocess.run([sys.executable, str(SERVER), str(tmp_path), flag, value], capture_output=True,
                             text=True, timeout=60)  # --port 70000 was an OverflowError traceback
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and f"{flag} {value} is out of range" in lines[0], bad.stderr


def test_dynamic_batching_server(tiny_onnx):
    srv = Server(tiny_onnx, "--max-wait-ms", "50", "--max-batch", "8")
    try:
        assert srv.request("GET", "/health")[1]["batching"] is True
        want = load(tiny_onnx).predict(TEXTS)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda t: srv.classify({"texts": [t]}), TEXTS * 4))
        assert all(code == 200 for code, _ in answers)
        assert [a[0]["label"] for _, a in answers] == [w["label"] for w in want] * 4
        assert all(abs(a[0]["score"] - w["score"]) < 1e-5 for (_, a), w in zip(answers, want * 4))
    finally:
        code, err = srv.stop()
    assert code == 0 and "Traceback" not in err, err


def test_keep_alive_serves_many_requests_on_one_connection(server):
    """HTTP/1.1: one socket carries answers, errors and health checks; every response has Content-Length."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.connect()
        sock = conn.sock
        requests = [("POST", "/classify", json.dumps({"texts": [t]}).encode()) for t in TEXTS]
        requests += [("GET", "/health", None), ("POST", "/classify", b"{not json"), ("POST", "/classify", b"{}")]
        requests += [("POST", "/classify", json.dumps({"texts": TEXTS}).encode())] * 3
        statuses = []
        for method, path, body in requests:
            conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
            resp = conn.getresponse()
            payload = resp.read()
            assert resp.version == 11 and not resp.will_close, resp.getheaders()
            assert int(resp.getheader("Content-Length")) == len(payload)
            assert conn.sock is sock  # http.client would have reconnected on a closed connection
            statuses.append(resp.status)
        assert statuses == [200] * len(TEXTS) + [200, 400, 400] + [200] * 3
    finally:
        conn.close()


def test_concurrent_keep_alive_clients_without_failures(tiny_optimized):
    """bench/serve/load.py's clients, 32 at once for 3 s on the batching server: no failure, one socket each."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", SERVER.parents[1] / "bench" / "serve" / "load.py")
    load_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_script)
    srv = Server(tiny_optimized, "--max-wait-ms", "5")
    try:
        result = load_script.run_load(srv.url, TEXTS, clients=32, seconds=3, requests=100_000, timeout=30)
    finally:
        code, err = srv.stop()
    assert result["failed"] == 0 and result["errors"] == {}, result
    assert result["ok"] >= 32 and result["connections"] == 32 and result["unfinished_clients"] == 0, result
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert code == 0 and "Traceback" not in err, err
