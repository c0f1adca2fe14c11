"""A pass-through HTTP proxy in front of the moto S3 server that can make restores look unfinished.

moto restores an archived object at once; the real S3 takes hours. While a key is in ``ongoing``, the proxy
rewrites the ``x-amz-restore`` header of that object's HEAD to ``ongoing-request="true"``, as S3 answers while
a restore runs. Every request is counted by ``(method, first query parameter)`` (``("POST", "restore")`` is a
RestoreObject). Nothing is mocked on the client side: bucketzip's own S3 clients talk to it over HTTP.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class RestoreProxy:
    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.ongoing: set[str] = set()  # "bucket/key" whose HEAD says a restore is running
        self.calls: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> str:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, name="s3proxy", daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: RestoreProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        p = self.owner
        split = urllib.parse.urlsplit(self.path)
        query = split.query.split("&", 1)[0].split("=", 1)[0]
        with p.lock:
            p.calls[(self.command, query)] += 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(p.host, p.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP]
            key = urllib.parse.unquote(split.path.lstrip("/"))
            if self.command == "HEAD" and key in p.ongoing:
                out = [(k, v) for k, v in out if k.lower() != "x-amz-restore"]
                out.append(("x-amz-restore", 'ongoing-request="true"'))
            self.send_response(resp.status, resp.reason)
            for k, v in out:
                self.send_header(k, v)
            self.send_header("Content-Length", resp.headers.get("Content-Length", str(len(data))))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward
