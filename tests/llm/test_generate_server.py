"""examples/generate_server.py over loopback: streamed SSE pieces add up to the text, keep-alive, one-line errors."""

from __future__ import annotations

import http.client
import json
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "examples"))
from gen_artifact import tiny_pair  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from generate_server import GenerateServer

    from edgekit.runtime.generate import load_generator

    artifact = tiny_pair(tmp_path_factory)[1]
    srv = GenerateServer(("127.0.0.1", 0), load_generator(artifact, engine="ort", threads=1), str(artifact),
                         max_new_tokens=32)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _events(body: bytes) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in body.decode().split("\n") if line.startswith("data: ")]


def test_stream_and_keep_alive(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    req = {"messages": [{"role": "user", "content": "what is the capital of france"}], "max_new_tokens": 10}
    conn.request("POST", "/generate", json.dumps(req))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    events = _events(resp.read())
    pieces = [e["text"] for e in events if "done" not in e]
    assert len(pieces) > 1 and events[-1]["done"] and "".join(pieces) == events[-1]["text"]
    conn.request("POST", "/generate", json.dumps({**req, "stream": False}))  # same connection: keep-alive
    whole = conn.getresponse()
    assert whole.status == 200 and json.loads(whole.read())["text"] == events[-1]["text"]
    assert server.generator.generate(req["messages"], max_new_tokens=10) == events[-1]["text"]


@pytest.mark.parametrize("body,needle,status", [
    (b"not json", "not JSON", 400),
    (json.dumps({"prompt": ""}).encode(), "Empty prompt", 400),
    (json.dumps({"prompt": "the " * 80}).encode(), "Prompt too long", 400),
    (json.dumps({"prompt": "the film", "max_new_tokens": 999}).encode(), "at most 32", 400),
    (json.dumps({"prompt": "the film", "temperature": "hot"}).encode(), "temperature", 400),
    (json.dumps({"text": "the film"}).encode(), "either", 400),
])
def test_bad_requests_get_one_line_json(server, body, needle, status):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request("POST", "/generate", body)
    resp = conn.getresponse()
    err = json.loads(resp.read())["error"]
    assert resp.status == status and needle in err and "\n" not in err
