"""A tiny HTTP proxy in front of the moto server that lets a test rewrite one S3 call's answer.

Every request is forwarded to moto as it came, unless the test's ``rule`` says otherwise for it:

- ``None``: forward it and pass moto's answer back (the default);
- ``Answer(status, code)``: answer it ourselves with an S3 error document, without forwarding it (an IAM
  policy denying ``s3:AbortMultipartUpload``, say);
- ``DROP``: forward it, so the server acts on it, then close the connection without answering (a response
  lost on the way back).

The client (botocore) and the server (moto) are real; only the wire between them is ours.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]

    def is_(self, method: str, param: str | None = None) -> bool:
        """``is_("POST", "uploads")``: a CreateMultipartUpload; ``is_("DELETE", "uploadId")``: an abort."""
        return self.method == method and (param is None or param in self.query)


@dataclass(frozen=True)
class Answer:
    status: int
    code: str
    message: str = "rewritten by the test's proxy"

    def body(self) -> bytes:
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
            f"<Message>{self.message}</Message><RequestId>proxy</RequestId></Error>"
        ).encode()


DROP = "drop"
Rule = Callable[[Request], "Answer | str | None"]


class S3Proxy:
    def __init__(self, upstream: str, rule: Rule) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rule = rule
        self.seen: list[tuple[Request, str]] = []  # each request and what the proxy did with it
        self._lock = threading.Lock()

    def record(self, request: Request, action: str) -> None:
        with self._lock:
            self.seen.append((request, action))

    def count(self, method: str, param: str | None = None, action: str | None = None) -> int:
        with self._lock:
            return sum(1 for r, a in self.seen if r.is_(method, param) and (action is None or a == action))


def _handler(proxy: S3Proxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            request = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True))
            body = self._body()
            action = proxy.rule(request)
            if isinstance(action, Answer):
                proxy.record(request, "answered")
                payload = action.body()
                self.send_response(action.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
            finally:
                upstream.close()
            if action == DROP:
                proxy.record(request, "dropped")
                self.close_connection = True
                return
            proxy.record(request, "forwarded")
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

    return Handler


@contextlib.contextmanager
def s3_proxy(upstream: str, rule: Rule) -> Iterator[tuple[str, S3Proxy]]:
    """Serve a proxy to ``upstream`` (the moto server's URL) on a free port; yield its URL and the proxy."""
    proxy = S3Proxy(upstream, rule)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="s3proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
