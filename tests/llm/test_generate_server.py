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
from conftest import check_http_refusal, http_refusal_cases, raw_http  # noqa: E402
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
    # each below dropped the connection with a traceback, or was taken with another meaning
    (b'{"prompt": "\\ud800 film"}', "not valid Unicode", 400),
    (b'{"prompt": "the film", "max_new_tokens": 1e400}', "max_new_tokens", 400),
    (b'{"prompt": "the film", "seed": 99999999999999999999999}', "seed must be from 0", 400),
    (json.dumps({"prompt": "the film", "seed": "12"}).encode(), '"seed" must be a whole number', 400),
    (json.dumps({"prompt": "the film", "stream": "no"}).encode(), '"stream" must be true or false', 400),
    (json.dumps({"messages": [{"role": "user"}]}).encode(), "Message 0 is not", 400),
    (json.dumps({"prompt": ["the film"] * 17}).encode(), "over the limit of 16", 413),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON", 400),
])
def test_bad_requests_get_one_line_json(server, body, needle, status):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request("POST", "/generate", body)
    resp = conn.getresponse()
    err = json.loads(resp.read())["error"]
    assert resp.status == status and needle in err and "\n" not in err


def test_the_servers_token_limit_holds_when_a_request_does_not_name_one(server):
    """--max-new-tokens was checked only when the request named max_new_tokens: 62 tokens came back under a 4 cap."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request("POST", "/generate", json.dumps({"prompt": "the film", "stream": False}))
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read())["text"] == server.generator.generate("the film", max_new_tokens=32)


@pytest.mark.parametrize("length", ["abc", "-1"])
def test_a_bad_content_length_is_a_400_that_closes(server, length):
    """'abc' dropped the connection (ValueError); '-1' read until the client closed, past the body limit."""
    import socket

    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
        sock.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 400") and b"Content-Length header" in got and b"Connection: close" in got


def _raw(server, data: bytes) -> bytes:
    return raw_http(server.server_address[1], data)


def test_an_unread_body_is_never_read_as_the_next_request(server):
    """A POST to another path, or one without Content-Length (chunked), kept the connection open with its body
    unread: the body was then parsed as a request of its own (here a second, smuggled GET /health)."""
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    got = _raw(server, b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
    assert got.startswith(b"HTTP/1.1 404") and got.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in got
    chunked = b"1d\r\n" + smuggled + b"\r\n0\r\n\r\n"
    got = _raw(server, b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    assert got.startswith(b"HTTP/1.1 400") and b"Content-Length header" in got and got.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("request_line,status,needle", http_refusal_cases("/generate"))
def test_other_methods_and_malformed_requests_get_json(server, request_line, status, needle):
    """http.server answered these with its HTML error page (501 for PUT/DELETE)."""
    check_http_refusal(server.server_address[1], request_line, status, needle)
