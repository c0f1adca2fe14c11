"""``python -m bench``: generate the corpora, run every contender against them, print the tables.

See bench/README.md for what is measured and how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bucketzip.config import usable_cpus
from bucketzip.devserver import moto_process

from . import corpus as corpora
from .report import summarize, table, write_json
from .runner import CONTENDERS, Context, bench_corpus, child_env, compile_bytecode, harness_s3

BUCKET = "bench"
OUT_BUCKET = "bench-out"
RESULTS = Path(__file__).parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", help="use this S3 endpoint instead of starting a local moto server")
    p.add_argument(
        "--corpus",
        default=",".join(corpora.DEFAULT),
        help=f"comma-separated, from {', '.join(corpora.CORPORA)}; or 'all' (default: %(default)s)",
    )
    p.add_argument(
        "--contenders",
        help=f"comma-separated, from {', '.join(CONTENDERS)} (default: all; only bucketzip on the RSS-only "
        "corpora large4g and small100)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per contender (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink the corpora, e.g. 0.05 for a smoke run")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    p.add_argument("--keep", action="store_true", help="leave the corpora in the bucket afterwards")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter every contender runs on, e.g. a venv's with only bucketzip's own dependencies, as "
        "deployed (default: this one; a development venv's test tools, which libraries import when they find "
        "them, add ~70 ms to every cold start)",
    )
    args = p.parse_args(argv)
    names = list(corpora.CORPORA) if args.corpus == "all" else args.corpus.split(",")
    for name in names:
        if name not in corpora.CORPORA:
            p.error(f"unknown corpus {name!r}")
    args.corpora = names
    wanted = args.contenders.split(",") if args.contenders else None
    if wanted and not set(wanted) <= set(CONTENDERS):
        p.error(f"unknown contender in {args.contenders!r}")
    args.wanted = wanted
    return args


@contextlib.contextmanager
def endpoint(given: str | None) -> Iterator[tuple[str, int | None]]:
    """The endpoint URL, and the server's pid when it is our own moto (to measure its CPU time)."""
    if given:
        yield given, None
    else:
        with moto_process() as (url, proc):
            yield url, proc.pid


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = dt.datetime.now()
    load = os.getloadavg()
    if load[0] > 0.5:  # measured before we start anything: someone else is using the CPUs
        print(f"warning: the machine is busy (load {load[0]:.1f}); timings will be noisy", file=sys.stderr)
    results_file = RESULTS / f"{started:%Y%m%d-%H%M%S}.json"
    compile_bytecode()
    record: dict = {
        "started": started.isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k not in ("corpora", "wanted")},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "os": platform.platform(),
            "load": load,
        },
        "corpora": {},
    }
    with endpoint(args.endpoint) as (url, server_pid), tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        env = child_env(url, local=args.endpoint is None)
        s3 = harness_s3(url, env, (BUCKET, OUT_BUCKET), connections=32)
        ctx = Context(s3, url, env, BUCKET, OUT_BUCKET, Path(tmp), args.timeout, server_pid, args.python)
        print(f"S3 endpoint {url}; results to {results_file}", file=sys.stderr)
        for name in args.corpora:
            c = corpora.build(name, args.scale)
            t0 = time.perf_counter()
            uploaded = corpora.upload(s3, BUCKET, c)
            upload_s = time.perf_counter() - t0
            print(
                f"{name}: {len(c.objects)} objects, {c.input_bytes / 1e6:,.1f} MB "
                f"({'uploaded' if uploaded else 'already there'}, {upload_s:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
            contenders = args.wanted or (["bucketzip"] if c.rss_only else list(CONTENDERS))
            outcomes = bench_corpus(ctx, c, contenders, args.runs)
            summary = summarize(c, outcomes)
            print(table(c, summary, usable_cpus()), flush=True)
            record["corpora"][name] = {
                "objects": len(c.objects),
                "input_bytes": c.input_bytes,
                "upload_seconds": upload_s,
                "load_after": os.getloadavg(),
                "summary": summary,
                "runs": outcomes,
            }
            # Written after each corpus, so that an interrupted benchmark keeps what it measured.
            write_json(results_file, record)
            if not args.keep:
                corpora.delete(s3, BUCKET, c.prefix)  # moto holds every object in memory
    return 0


if __name__ == "__main__":
    sys.exit(main())
