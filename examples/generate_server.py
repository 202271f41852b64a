"""A streaming text-generation HTTP service over an edgekit causal-LM artifact: the standard library only.

Install only the runtime (no torch, no transformers), optimize a model once, then serve it::

    pip install 'edgekit[cpu]' onnxruntime-genai
    python examples/generate_server.py out/smollm2-int4 --port 8000
    curl -sN localhost:8000/generate -d '{"messages": [{"role": "user", "content": "Capital of France?"}]}'
    # data: {"text": "The"}  data: {"text": " capital"} ...  data: {"done": true, "text": "The capital ..."}

Endpoints: ``POST /generate`` with ``{"prompt": str}`` or ``{"messages": [...]}`` and optional
``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``, ``seed``, ``chat``, ``stream`` (default
true). Streamed: server-sent events (``text/event-stream``) over chunked transfer encoding, one
``data: {"text": piece}`` event per piece and a final ``data: {"done": true, "text": full}``; ``stream: false``
returns one JSON object ``{"text": ...}``. ``GET /health`` -> ``{"status": "ok", ...}``. Bad requests: HTTP 400
(413 when too large; 404 for another path, 405 for another method; 500 when the runtime fails) with
``{"error": "<one line>"}``. HTTP/1.1 keep-alive. One generation at a time (a lock);
``--port 0`` picks a free port and the first stdout line says which.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgekit.errors import EdgekitError, InputError
from edgekit.runtime.generate import TextGenerator, load_generator

OPTIONS = {"max_new_tokens": int, "temperature": float, "top_p": float, "top_k": int, "seed": int, "chat": bool}
DEFAULT_NEW_TOKENS = 128  # TextGenerator.generate's own default, capped by --max-new-tokens
MAX_PROMPTS = 16          # prompts in one request (each runs while the generation lock is held)


class GenerateServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, generator: TextGenerator, artifact: str, max_body_bytes: int = 1 << 20,
                 max_new_tokens: int = 512):
        super().__init__(address, Handler)
        self.generator, self.artifact = generator, artifact
        self.max_body_bytes, self.max_new_tokens = max_body_bytes, max_new_tokens
        self.lock = threading.Lock()  # a TextGenerator runs one generation at a time


class BadRequest(Exception):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, max_new_tokens: int) -> tuple[object, dict, bool]:
    """(prompt or messages, generate() options, stream) from a JSON body, or BadRequest with one line."""
    try:
        req = json.loads(body or b"null")
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past Python's recursion limit
        raise BadRequest(f"Body is not JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(req, dict) or ("prompt" in req) == ("messages" in req):
        raise BadRequest('Send a JSON object with either "prompt" (a string) or "messages" (a list)')
    prompt = req.get("prompt", req.get("messages"))
    if not isinstance(prompt, str | list) or isinstance(prompt, list) and not prompt:
        raise BadRequest('"prompt" must be a string and "messages" a non-empty list of {"role", "content"}')
    if isinstance(prompt, list) and "prompt" in req and len(prompt) > MAX_PROMPTS:
        raise BadRequest(f"{len(prompt)} prompts in one request, over the limit of {MAX_PROMPTS}: split it",
                         HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    opts = {}
    for key, kind in OPTIONS.items():
        value = req.get(key)
        if value is None:
            continue
        # JSON types as they are: no bool for a number, no string for either ("seed": "12", "stream": "no")
        ok = isinstance(value, bool) if kind is bool else \
            (isinstance(value, int) and not isinstance(value, bool)) if kind is int else \
            (isinstance(value, int | float) and not isinstance(value, bool) and abs(value) != float("inf"))
        if not ok:
            want = {int: "a whole number", float: "a finite number", bool: "true or false"}[kind]
            raise BadRequest(f'"{key}" must be {want}')
        opts[key] = value
    if opts.get("max_new_tokens", 0) > max_new_tokens:
        raise BadRequest(f'"max_new_tokens" is at most {max_new_tokens} here')
    opts.setdefault("max_new_tokens", min(DEFAULT_NEW_TOKENS, max_new_tokens))  # the limit holds when not asked too
    if not isinstance(req.get("stream", True), bool):
        raise BadRequest('"stream" must be true or false')
    stop = req.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest('"stop" must be a string or a list of strings')
        opts["stop"] = stop
    return prompt, opts, bool(req.get("stream", True))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response has Content-Length or chunked encoding
    server: GenerateServer

    timeout = 60  # seconds a connection may sit idle or half-sent before it is closed (a stalled client's thread)

    def log_message(self, *args) -> None:  # quiet by default
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError):  # the client went away or stalled: nothing to answer
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/health":
            return self._json({"error": f"No such endpoint: GET {self.path}"}, HTTPStatus.NOT_FOUND)
        g = self.server.generator
        self._json({"status": "ok", "artifact": self.server.artifact, "engine": g.engine_name,
                    "context_length": g.info.context_length})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/generate":
            self.close_connection = True  # its body is left unread: it must not be read as the next request
            return self._json({"error": f"No such endpoint: POST {self.path}"}, HTTPStatus.NOT_FOUND)
        try:
            raw = self.headers.get("Content-Length")
            if raw is None or not (raw.isascii() and raw.isdigit()):  # chunked, "abc", "-1", "²"
                self.close_connection = True  # the body's end is unknown: it must not be read as a request
                raise BadRequest("Missing or invalid Content-Length header: send the JSON body with its length")
            length = int(raw)
            if length > self.server.max_body_bytes:
                self.close_connection = True  # the unread body must not be parsed as the next request
                raise BadRequest(f"Body of {length} bytes is over the {self.server.max_body_bytes}-byte limit",
                                 HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            prompt, opts, stream = parse_request(self.rfile.read(length), self.server.max_new_tokens)
            with self.server.lock:
                gen = self.server.generator
                if not stream:
                    return self._json({"text": gen.generate(prompt, **opts)})
                pieces = gen.generate(prompt, stream=True, **opts)
                first = next(pieces, "")  # errors (empty prompt, too long) surface here, before the 200
                self._stream([first], pieces)
        except BadRequest as exc:
            self._json({"error": str(exc)}, exc.status)
        except InputError as exc:  # the prompt: empty, too long, not valid Unicode...
            self._json({"error": exc.message}, HTTPStatus.BAD_REQUEST)
        except EdgekitError as exc:  # the runtime failed: not the client's fault
            self._json({"error": exc.message}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _method_not_allowed(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served: use GET /health or "
                                                       "POST /generate")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _method_not_allowed  # noqa: N815

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, an unknown method, headers over its limits) as
        ``{"error": ...}`` like every other answer, not its HTML page; the connection closes after them."""
        self.close_connection = True
        self._json({"error": message or HTTPStatus(code).phrase}, HTTPStatus(code))

    def _stream(self, head: list[str], rest) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        text = []
        try:
            for piece in [*head, *rest]:
                if piece:
                    text.append(piece)
                    self._chunk({"text": piece})
            self._chunk({"done": True, "text": "".join(text)})
        except EdgekitError as exc:  # mid-stream: the status is sent already, say it in the stream
            self._chunk({"error": exc.message})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, event: dict) -> None:
        data = f"data: {json.dumps(event)}\n\n".encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, obj, status: HTTPStatus = HTTPStatus.OK) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, POST")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer carries headers only
            self.wfile.write(body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", help="folder written by edgekit optimize --task text-generation")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--engine", default="auto", help="auto, ort or genai")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="largest max_new_tokens a request may ask")
    args = ap.parse_args(argv)
    for name, value, ok, want in (("--port", args.port, 0 <= args.port <= 65535, "0 to 65535"),
                                  ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "at least 1"),
                                  ("--threads", args.threads, args.threads is None or args.threads >= 1,
                                   "at least 1")):
        if not ok:  # --port 70000 was an OverflowError traceback; --max-new-tokens 0 refused every request
            print(f"Error: {name} {value} is out of range. Pass {want}.", file=sys.stderr)
            return 1
    try:
        generator = load_generator(args.artifact, engine=args.engine, threads=args.threads)
        server = GenerateServer((args.host, args.port), generator, args.artifact,
                                max_new_tokens=args.max_new_tokens)
    except EdgekitError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"Error: cannot listen on {args.host}:{args.port}: {exc.strerror}.", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    print(f"serving {args.artifact} on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
