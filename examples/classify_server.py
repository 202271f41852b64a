"""A small text-classification HTTP service over an edgekit artifact: the standard library, no web framework.

Install only the runtime (no torch, no transformers), optimize a model once, then serve it::

    pip install 'edgekit[cpu]'
    python examples/classify_server.py out/minilm-l6-sst2 --port 8000
    curl -s localhost:8000/classify -d '{"texts": ["a gripping, funny film", "dull"]}'
    # [{"label": "positive", "score": 0.99...}, {"label": "negative", "score": 0.98...}]

Endpoints: ``POST /classify`` with ``{"texts": [str, ...]}`` -> a JSON list in the transformers
``pipeline`` format; ``GET /health`` -> ``{"status": "ok", ...}``. A bad request gets HTTP 400 (413 when
too large; 404 for another path, 405 for another method) and ``{"error": "<one line>"}``. ``--port 0`` picks a free port; the first line on stdout says
which. ``--max-wait-ms`` > 0 merges concurrent requests into shared batches (DynamicBatcher). SIGTERM or
Ctrl-C stops the server cleanly (exit 0).

Connections are HTTP/1.1 keep-alive (a client sends request after request on one socket), each served by a
daemon thread, with a listen backlog of 128; ``bench/serve/load.py`` drives it with concurrent clients and
``bench/serve/results.md`` records what it holds.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgekit.errors import EdgekitError, InputError
from edgekit.runtime import DynamicBatcher, TextClassifier, load


class ClassifyServer(ThreadingHTTPServer):
    """Serves one classifier; each connection runs on its own daemon thread (the classifier is thread-safe).

    HTTP/1.1 keep-alive: a client sends many requests over one connection. The listen backlog holds
    ``request_queue_size`` connections waiting to be accepted (the stdlib default of 5 drops connections
    under a burst of clients).
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], classifier: TextClassifier, artifact: str,
                 batcher: DynamicBatcher | None = None, max_texts: int = 256, max_body_bytes: int = 1 << 20,
                 access_log: bool = False):
        super().__init__(address, Handler)
        self.classifier = classifier
        self.artifact = artifact
        self.batcher = batcher
        self.max_texts = max_texts
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    def classify(self, texts: list[str]) -> list[dict]:
        if self.batcher is not None:
            return self.batcher.predict(texts, timeout=60)
        return self.classifier.predict(texts)


class BadRequest(Exception):
    """A client error: its message is sent back as ``{"error": ...}`` with ``status``."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    server: ClassifyServer
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    server_version = "edgekit-classify/0.1"
    disable_nagle_algorithm = True  # small responses go out at once, not after the client's delayed ACK
    timeout = 60  # seconds a connection may sit idle or half-sent before it is closed (a stalled client's thread)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError):  # the client went away or stalled: nothing to answer
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        if self.path.split("?")[0] != "/health":
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"No route GET {self.path}: use GET /health"})
        clf = self.server.classifier
        self._send(HTTPStatus.OK, {"status": "ok", "artifact": self.server.artifact, "backend": clf.session.backend,
                                   "labels": clf.labels, "batching": self.server.batcher is not None})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/classify":
            self.close_connection = True  # its body is left unread
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"No route POST {self.path}: use POST /classify"})
        try:
            texts = self._texts(self._read_json())
        except BadRequest as exc:
            return self._send(exc.status, {"error": str(exc)})
        try:
            result = self.server.classify(texts)
        except InputError as exc:  # e.g. a text that is not valid Unicode (a lone surrogate escaped in the JSON)
            return self._send(HTTPStatus.BAD_REQUEST, {"error": exc.message})
        except EdgekitError as exc:  # e.g. the batcher's queue is full
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": exc.message})
        except TimeoutError:  # the batcher did not run this request within its wait: overloaded, not a bad request
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE,
                              {"error": "The request waited over 60 s for a batch: the server is overloaded, retry"})
        self._send(HTTPStatus.OK, result)

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):  # "²" is a digit to isdigit(), not to int()
            self.close_connection = True  # a body of unknown length (chunked, say) must not be read as a request
            raise BadRequest("Missing or invalid Content-Length header: send the JSON body with its length")
        if int(length) > self.server.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise BadRequest(f"Request body of {length} bytes is over the limit of {self.server.max_body_bytes}",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        body = self.rfile.read(int(length))
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested 100000 deep
            raise BadRequest(f"Request body is not valid JSON: {' '.join(str(exc).split())[:200]}") from None

    def _texts(self, payload) -> list[str]:
        if not isinstance(payload, dict) or "texts" not in payload:
            raise BadRequest('Request body must be a JSON object {"texts": ["...", ...]}')
        texts = payload["texts"]
        if not isinstance(texts, list):
            raise BadRequest(f'"texts" must be a list of strings, not {_json_type(texts)}')
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise BadRequest(f'"texts" must hold strings only: item {i} is {_json_type(text)}')
        if len(texts) > self.server.max_texts:
            raise BadRequest(f"{len(texts)} texts in one request, over the limit of {self.server.max_texts}: "
                             "split the request", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return texts

    def _method_not_allowed(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served: use GET /health or "
                                                       "POST /classify")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _method_not_allowed  # noqa: N815

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, an unknown method, headers over its limits) as
        ``{"error": ...}`` like every other answer, not its HTML page; the connection closes after them."""
        self.close_connection = True
        self.log_error("code %d, message %s", code, message)
        self._send(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase})

    def _send(self, status: HTTPStatus, payload) -> None:
        body = (json.dumps(payload) + "\n").encode("utf-8")
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

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's signature)
        if self.server.access_log:
            super().log_message(format, *args)


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve an edgekit artifact over HTTP: POST /classify, GET /health.")
    p.add_argument("artifact", help="artifact folder (edgekit optimize --out, or an engine folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = a free port)")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | tensorrt | tensorrt-rtx")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the backend's)")
    p.add_argument("--batch-size", type=int, default=None, help="model batch size (default: the gated one)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="> 0: merge concurrent requests into shared batches, waiting at most this long (default 0: off)")
    p.add_argument("--max-batch", type=int, default=16, help="most texts per shared batch (default: 16)")
    p.add_argument("--max-texts", type=int, default=256, help="most texts per request (default: 256)")
    p.add_argument("--access-log", action="store_true", help="log each request to stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value, ok, want in (("--port", args.port, 0 <= args.port <= 65535, "0 to 65535"),
                                  ("--max-texts", args.max_texts, args.max_texts >= 1, "at least 1"),
                                  ("--max-batch", args.max_batch, args.max_batch >= 1, "at least 1"),
                                  ("--max-wait-ms", args.max_wait_ms, 0 <= args.max_wait_ms <= 60000, "0 to 60000")):
        if not ok:  # --port 70000 was an OverflowError traceback; --max-wait-ms nan turned batching off unseen
            print(f"Error: {name} {value} is out of range. Pass {want}.", file=sys.stderr)
            return 1
    try:
        clf = load(args.artifact, backend=args.backend, threads=args.threads, batch_size=args.batch_size)
        batcher = DynamicBatcher(clf, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms) \
            if args.max_wait_ms > 0 else None
    except EdgekitError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return 1
    try:
        server = ClassifyServer((args.host, args.port), clf, args.artifact, batcher, max_texts=args.max_texts,
                                access_log=args.access_log)
    except OSError as exc:
        print(f"Error: Cannot listen on {args.host}:{args.port}: {exc.strerror}. Pass another --port.", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_interrupt)
    host, port = server.server_address[:2]
    print(f"edgekit classify_server listening on http://{host}:{port} (backend {clf.session.backend})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if batcher is not None:
            batcher.close(timeout=10)
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
