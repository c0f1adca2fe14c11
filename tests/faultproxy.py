"""A fault-injecting HTTP proxy in front of an S3 endpoint (the moto server), for the fault matrix.

Workers get ``AWS_ENDPOINT_URL_S3`` pointing here; every request is classified as an S3 operation from its
method, path and query string, matched against the rules, and either forwarded to the server or answered with
a fault. Every exchange is logged with the server's answer, so a test can count what really happened at the
store (how many CompleteMultipartUpload or PutObject calls published the destination) whatever the client saw.

Faults (``Rule.fault``):

- ``error``: answer ``status`` (500, 503...) with an S3 error body ``code`` (``SlowDown``, ``InternalError``)
  without forwarding.
- ``reset``: read the request, then reset the connection (RST) without forwarding.
- ``truncate``: forward, then send the headers and half the body and close the connection (cut mid-body).
- ``error_body``: answer 200 with an error document (as S3 may answer a CompleteMultipartUpload) without
  forwarding.
- ``lose_response``: forward (the store acts), then close the connection without answering.
- ``stall``: hold the request before forwarding until ``release()`` (or ``hold`` seconds); if the client has
  gone by then, drop it without forwarding, as a request that never left a dead process.
- ``stall_response``: forward, then hold the answer until released: the store has acted, the client does not
  know yet.
- ``corrupt``: forward, then answer with one bit of the body flipped halfway through, headers as the server sent
  them (a checksum header among them): bytes damaged on the way.

A CompleteMultipartUpload of an upload already completed is answered ``404 NoSuchUpload`` without reaching the
server, as MinIO does (moto would complete it again and, in a versioned bucket, publish a second version).
"""

from __future__ import annotations

import contextlib
import http.client
import random
import select
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPERATIONS = (
    "create",  # CreateMultipartUpload: POST ?uploads
    "part",  # UploadPart: PUT ?partNumber&uploadId
    "complete",  # CompleteMultipartUpload: POST ?uploadId
    "abort",  # AbortMultipartUpload: DELETE ?uploadId
    "list_parts",  # GET ?uploadId
    "list_uploads",  # GET bucket?uploads
    "list",  # ListObjectsV2: GET bucket?list-type=2
    "get",  # GetObject
    "head",  # HeadObject
    "put",  # PutObject
    "delete",  # DeleteObject
    "other",  # buckets, versioning, anything else
)
FAULTS = ("error", "reset", "truncate", "error_body", "lose_response", "stall", "stall_response", "corrupt")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}


def classify(method: str, path: str, query: str) -> tuple[str, str, str, str | None]:
    """``(operation, bucket, key, upload id)`` of a path-style S3 request."""
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    bucket, _, key = urllib.parse.unquote(path.lstrip("/")).partition("/")
    upload_id = q.get("uploadId", [None])[0]
    if method == "POST" and "uploads" in q:
        op = "create"
    elif method == "PUT" and upload_id and "partNumber" in q:
        op = "part"
    elif method == "POST" and upload_id:
        op = "complete"
    elif method == "DELETE" and upload_id:
        op = "abort"
    elif method == "GET" and upload_id:
        op = "list_parts"
    elif method == "GET" and not key and "uploads" in q:
        op = "list_uploads"
    elif method == "GET" and not key and ("list-type" in q or not q):
        op = "list"
    elif method in ("GET", "HEAD", "PUT", "DELETE") and key and not q.keys() - {"versionId", "x-id"}:
        op = {"GET": "get", "HEAD": "head", "PUT": "put", "DELETE": "delete"}[method]
    else:
        op = "other"
    return op, bucket, key, upload_id


@dataclass
class Rule:
    """Which requests to fault and how. ``times``: how many (None: every match); ``skip``: let that many
    matching requests through first; ``probability``: the chance each remaining match is faulted (drawn
    from the proxy's seeded generator)."""

    op: str
    fault: str
    key: str | None = None  # only requests for this object key
    bucket: str | None = None  # only requests to this bucket
    status: int = 503
    code: str = "SlowDown"
    times: int | None = 1
    skip: int = 0
    probability: float = 1.0
    hold: float = 30.0  # longest a stall holds, seconds
    seen: int = 0  # matching requests so far
    hits: int = 0  # requests faulted
    held: int = 0  # requests held right now (stalls)
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.op not in (*OPERATIONS, "any"):
            raise ValueError(f"unknown operation {self.op!r}")
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}")

    def release(self) -> None:
        self.released.set()


@dataclass
class Exchange:
    """One request as the proxy saw it: what the server answered (None: not forwarded) and what the client
    got (``answered``: False when the connection was dropped or reset)."""

    op: str
    method: str
    bucket: str
    key: str
    upload_id: str | None
    fault: str | None
    upstream_status: int | None = None
    upstream_ok: bool = False  # 2xx and no error document
    answered: bool = False
    at: float = field(default_factory=time.monotonic)


class FaultProxy:
    """``with FaultProxy(upstream_url, seed=1) as proxy: ... proxy.url ...``"""

    def __init__(self, upstream: str, seed: int = 0, repeat_complete_no_such_upload: bool = True) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.random = random.Random(seed)
        self.repeat_complete_no_such_upload = repeat_complete_no_such_upload
        self.rules: list[Rule] = []
        self.log: list[Exchange] = []
        self.completed: set[str] = set()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.release_all()
        self.server.shutdown()
        self.server.server_close()

    # --- rules ---

    def add(self, op: str, fault: str, **options: Any) -> Rule:
        rule = Rule(op, fault, **options)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (releasing held requests)."""
        self.release_all()
        with self.lock:
            self.rules.clear()

    def release_all(self) -> None:
        with self.lock:
            rules = list(self.rules)
        for rule in rules:
            rule.release()

    def _match(self, op: str, bucket: str, key: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.op not in (op, "any") or rule.key not in (None, key) or rule.bucket not in (None, bucket):
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip or (rule.times is not None and rule.hits >= rule.times):
                    continue
                if rule.probability < 1.0 and self.random.random() >= rule.probability:
                    continue
                rule.hits += 1
                return rule
        return None

    # --- what happened ---

    def exchanges(self, op: str | None = None, key: str | None = None) -> list[Exchange]:
        with self.lock:
            return [e for e in self.log if (op is None or e.op == op) and (key is None or e.key == key)]

    def publications(self, bucket: str, key: str) -> int:
        """How many requests published ``bucket/key`` at the server: a CompleteMultipartUpload or PutObject
        the server accepted, whether or not the client heard the answer."""
        return sum(
            1 for e in self.exchanges(key=key) if e.bucket == bucket and e.op in ("complete", "put") and e.upstream_ok
        )

    def wait_held(self, rule: Rule, timeout: float = 60) -> None:
        """Block until ``rule`` holds a request (a stall has caught one)."""
        deadline = time.monotonic() + timeout
        while rule.held == 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"no request was held by {rule.op}/{rule.fault} within {timeout}s")
            time.sleep(0.01)


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue for botocore's part uploads

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._proxy()

        do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        def _proxy(self) -> None:
            path, _, query = self.path.partition("?")
            op, bucket, key, upload_id = classify(self.command, path, query)
            body = self._read_body()
            rule = proxy._match(op, bucket, key)
            ex = Exchange(op, self.command, bucket, key, upload_id, rule.fault if rule else None)
            with proxy.lock:
                proxy.log.append(ex)
            fault = rule.fault if rule else None
            if rule is not None and fault == "error":
                return self._answer(ex, rule.status, _error_xml(rule.code))
            if fault == "error_body":
                return self._answer(ex, 200, _error_xml("InternalError"))
            if fault == "reset":
                return self._reset()
            if rule is not None and fault == "stall":
                self._hold(rule)
                if self._client_gone():
                    self.close_connection = True
                    return None
            if op == "complete" and proxy.repeat_complete_no_such_upload and upload_id in proxy.completed:
                return self._answer(ex, 404, _error_xml("NoSuchUpload"))
            try:
                status, headers, data = self._forward(body)
            except OSError:
                return self._reset()
            ex.upstream_status = status
            ex.upstream_ok = 200 <= status < 300 and b"<Error>" not in data[:512]
            if op == "complete" and ex.upstream_ok and upload_id:
                with proxy.lock:
                    proxy.completed.add(upload_id)
            if fault == "lose_response":
                self.close_connection = True
                return None
            if rule is not None and fault == "stall_response":
                self._hold(rule)
                if self._client_gone():
                    self.close_connection = True
                    return None
            if fault == "truncate":
                return self._send(ex, status, headers, data, truncate=True)
            if fault == "corrupt" and data:
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
            return self._send(ex, status, headers, data)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            """Send the request to the server as it came (the Host header the client signed included)."""
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                r = conn.getresponse()
                data = r.read()
                return r.status, r.getheaders(), data
            finally:
                conn.close()

        def _hold(self, rule: Rule) -> None:
            with proxy.lock:
                rule.held += 1
            try:
                rule.released.wait(rule.hold)
            finally:
                with proxy.lock:
                    rule.held -= 1

        def _client_gone(self) -> bool:
            sock = self.connection
            try:
                readable, _, _ = select.select([sock], [], [], 0)
                return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _answer(self, ex: Exchange, status: int, body: bytes) -> None:
            self._send(ex, status, [("Content-Type", "application/xml")], body)

        def _send(
            self, ex: Exchange, status: int, headers: list[tuple[str, str]], body: bytes, truncate: bool = False
        ) -> None:
            ex.answered = not truncate  # before the first write: the client may act on it at once
            try:
                self.send_response_only(status)
                head = self.command == "HEAD"  # its Content-Length is the object's, not this (empty) body's
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and (head or name.lower() != "content-length"):
                        self.send_header(name, value)
                if not head:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if truncate:
                    # Half the body, then end the connection. A FIN, not a RST: Linux discards data the
                    # client has not read yet when a RST arrives, and the client must see the short body.
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_WR)
                    return None
                if self.command != "HEAD":
                    self.wfile.write(body)
                self.wfile.flush()
            except OSError:
                ex.answered = False
                self.close_connection = True

        def _reset(self) -> None:
            """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.close()

    return Handler


def _error_xml(code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected by the fault proxy</Message><RequestId>faultproxy</RequestId></Error>"
    ).encode()


@contextlib.contextmanager
def fault_proxy(upstream: str, seed: int = 0) -> Iterator[FaultProxy]:
    with FaultProxy(upstream, seed) as proxy:
        yield proxy


@contextlib.contextmanager
def holding(upstream: str, op: str, bucket: str, key: str) -> Iterator[tuple[str, Rule]]:
    """An endpoint in front of ``upstream`` on which every ``op`` request for ``bucket``/``key`` waits until the
    rule is released, or the block ends (at most 300 s): a job that needs that object cannot finish, however fast
    the machine. Yields the endpoint's URL and the rule."""
    with FaultProxy(upstream) as proxy:
        rule = proxy.add(op, "stall", bucket=bucket, key=key, times=None, hold=300)
        try:
            yield proxy.url, rule
        finally:
            rule.release()
