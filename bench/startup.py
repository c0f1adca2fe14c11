"""``python -m bench.startup``: what a cold ``bucketzip run`` spends before its first request.

Runs ``bucketzip run`` on one corpus (``--corpus``, default tiny) against a local moto server, ``--runs`` times
for each interpreter given (``--python``, repeatable: e.g. two venvs, old code and new, alternated in one run),
with ``bench/stamp/sitecustomize.py`` loaded into each process. It stamps, after the interpreter's own start:
the first connection (the listing, the job's first request), the CPU the process had used by then (all its
threads), and the garbage collections before it. Medians are printed, with the whole run's wall time, and the
ratio of each interpreter's wall times to the first's, run by run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bucketzip.devserver import moto_process

from . import corpus as corpora
from .runner import bucketzip_command, child_env, compile_bytecode, harness_s3, settle

BUCKET = "bench"
STAMP = Path(__file__).parent / "stamp"
FIELDS = ("first_request_ms", "cpu_before_ms", "gc_before_n", "gc_before_ms", "exit_ms")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10, help="runs per interpreter (default: %(default)s)")
    p.add_argument("--corpus", default="tiny", choices=corpora.CORPORA, help="(default: %(default)s)")
    p.add_argument(
        "--python", action="append", help="an interpreter with bucketzip installed (repeatable; default: this one)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    pythons = args.python or [sys.executable]
    compile_bytecode()
    with moto_process() as (url, server), tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        env = child_env(url, local=True)
        s3 = harness_s3(url, env, (BUCKET, "bench-out"))
        c = corpora.build(args.corpus)
        corpora.upload(s3, BUCKET, c)
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {"sources": [f"s3://{BUCKET}/{c.prefix}"], "destination": "s3://bench-out/t.zip", "compression": "auto"}
            )
        )
        stamps = {p: Path(tmp) / f"stamps-{i}.jsonl" for i, p in enumerate(pythons)}
        walls: dict[str, list[float]] = {p: [] for p in pythons}
        for r in range(args.runs):
            for python in pythons if r % 2 == 0 else pythons[::-1]:
                settle(server.pid)  # the server idle first, as in every benchmark here
                run_env = {**env, "PYTHONPATH": str(STAMP), "BENCH_STAMP": str(stamps[python])}
                t = time.perf_counter()
                subprocess.run(
                    [*bucketzip_command(python), "run", "-q", str(spec)],
                    env=run_env,
                    cwd=tmp,  # not the checkout, whose bucketzip `python -m` would import instead of the venv's
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                walls[python].append(time.perf_counter() - t)
                s3.delete_object(Bucket="bench-out", Key="t.zip")
        print(
            f"cold `bucketzip run` of {c.name} ({len(c.objects)} objects), {args.runs} runs each, medians, alternated"
        )
        head = ("1st request ms", "CPU before ms", "GCs before", "GC ms", "exit ms", "wall s")
        print(f"{'python':40} " + " ".join(f"{h:>14}" for h in head))
        for python in pythons:
            rows = [json.loads(line) for line in stamps[python].read_text().splitlines()]
            med = {f: statistics.median(row[f] for row in rows) for f in FIELDS}
            print(
                f"{python[-40:]:40} {med['first_request_ms']:14.0f} {med['cpu_before_ms']:14.0f} "
                f"{med['gc_before_n']:14.0f} {med['gc_before_ms']:14.1f} {med['exit_ms']:14.0f} "
                f"{statistics.median(walls[python]):14.3f}"
            )
        for python in pythons[1:]:
            ratio = statistics.median(b / a for a, b in zip(walls[pythons[0]], walls[python], strict=True))
            print(f"{python}: its wall time over {pythons[0]}'s, run by run, median {ratio:.3f}")


if __name__ == "__main__":
    main()
