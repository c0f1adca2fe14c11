"""Our memory while listing a huge prefix: ``python -m bench.listing [--keys 1000000]``.

moto takes hours to hold a million objects, and the point here is bucketzip's memory, not the server's, so this
serves ListObjectsV2 from a small endpoint of its own: keys are generated page by page (1,000 a page, like S3),
``many/d{i // 1000:04d}/f{i:07d}.{jpg|txt}``, one in a hundred a ``.jpg``. Each case runs bucketzip's selection
(the real S3 store: s3fs's aiobotocore client, botocore's XML parser, the limits) in a fresh process, measured
from outside (peak RSS from ``wait4``, as in the main benchmark). The cases:

- **glob**: ``s3://fake/many/**/*.jpg``: every key listed, 1% kept;
- **prefix**: ``s3://fake/many/``: every key matches, so ``BUCKETZIP_MAX_ENTRIES`` (100,000) stops it;
- **cap**: the glob again under ``BUCKETZIP_MAX_KEYS_LISTED`` = half the keys;
- **sources**: the prefix named by ten sources: the entry limit holds across them (before it applied to each
  source's own listing, and ten sources could gather ten times ``BUCKETZIP_MAX_ENTRIES``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .measure import run
from .runner import child_env

PAGE = 1_000  # S3's page of ListObjectsV2
MiB = 2**20


def key(i: int) -> str:
    return f"many/d{i // 1000:04d}/f{i:07d}.{'jpg' if i % 100 == 0 else 'txt'}"


def page_xml(prefix: str, start: int, total: int) -> bytes:
    """One ListObjectsV2 page from key number ``start``; the continuation token is the next number."""
    end = min(total, start + PAGE)
    body = [
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>fake</Name><Prefix>{prefix}</Prefix><KeyCount>{end - start}</KeyCount><MaxKeys>{PAGE}</MaxKeys>"
        f"<IsTruncated>{'true' if end < total else 'false'}</IsTruncated>"
    ]
    if end < total:
        body.append(f"<NextContinuationToken>{end}</NextContinuationToken>")
    for i in range(start, end):
        body.append(
            f"<Contents><Key>{key(i)}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
            f'<ETag>"{i:032x}"</ETag><Size>{1000 + i % 5000}</Size><StorageClass>STANDARD</StorageClass></Contents>'
        )
    body.append("</ListBucketResult>")
    return "".join(body).encode()


@contextmanager
def fake_s3(total: int) -> Iterator[str]:
    """An endpoint that answers ListObjectsV2 on bucket ``fake`` with ``total`` generated keys."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            prefix = query.get("prefix", "")
            count = total if prefix in ("", "many/") else 0
            data = page_xml(prefix, int(query.get("continuation-token", "0")), count)
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that closes its pooled connections at exit resets them: not news

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def child(sources: list[str]) -> int:
    """Run bucketzip's selection of ``sources`` in this process and print what it found, as JSON."""
    from bucketzip.config import Settings
    from bucketzip.engine import run_sync
    from bucketzip.errors import LimitExceeded
    from bucketzip.selection import select
    from bucketzip.spec import JobSpec
    from bucketzip.stores import store_for

    settings = Settings.from_env()
    spec = JobSpec.from_dict({"sources": sources, "destination": "s3://out/x.zip"}, settings)
    started = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        sel = run_sync(select(spec, settings, lambda p: store_for(p, settings)))
        result["entries"] = len(sel.entries)
    except LimitExceeded as exc:
        result["error"] = str(exc)
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result))
    return 0


CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "glob": (["s3://fake/many/**/*.jpg"], {}),
    "prefix": (["s3://fake/many/"], {}),
    "cap": (["s3://fake/many/**/*.jpg"], {"BUCKETZIP_MAX_KEYS_LISTED": "half"}),
    "sources": (["s3://fake/many/"] * 10, {}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.listing", description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000, help="keys under the prefix (default: %(default)s)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, from %(default)s")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    rows = []
    with fake_s3(args.keys) as url:
        base = child_env(url, local=True)
        for name in args.cases.split(","):
            sources, extra = CASES[name]
            source = sources[0] + (f" x {len(sources)}" if len(sources) > 1 else "")
            env = base | {k: str(args.keys // 2) if v == "half" else v for k, v in extra.items()}
            m = run([sys.executable, "-m", "bench.listing", "--child", json.dumps(sources)], env, timeout=1800)
            if not m.ok:
                print(f"{name}: FAILED\n{m.tail()}", file=sys.stderr)
                continue
            r = m.result()
            outcome = f"{r['entries']:,} entries" if "entries" in r else r["error"]
            rows.append((name, source, m.seconds, r["seconds"], m.peak_rss / MiB, outcome))
            print(f"  {name}: {m.seconds:.1f} s, peak RSS {m.peak_rss / MiB:.0f} MiB: {outcome}", file=sys.stderr)
    print(f"\nlisting {args.keys:,} keys (1,000 a page) from a generated ListObjectsV2 endpoint")
    print(f"{'case':7} {'source':30} {'total s':>8} {'select s':>9} {'RSS MiB':>8}  outcome")
    for name, source, total, sel_s, rss, outcome in rows:
        print(f"{name:7} {source:30} {total:8.1f} {sel_s:9.1f} {rss:8.0f}  {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
