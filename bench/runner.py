"""Benchmark one corpus: each contender, run after run, each run a fresh process against the same server.

Runs are interleaved so that drift in the machine or the server weighs on every contender alike, and each round
starts one contender later (naive, bucketzip, bound; then bucketzip, bound, naive; ...) so that none always
runs right after the same other one. Before each run the server is left to settle until it uses no CPU: after a
large archive is deleted moto is busy for a while, and the next run would pay for it. Each contender's first good
archive is verified; every archive is deleted after its run, because moto keeps each object in memory.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bucketzip.devserver import cpu_seconds

from . import corpus as corpora
from .measure import Measured, run
from .verify import VerifyError, verify

CONTENDERS = ("naive", "bucketzip", "bound")


@dataclass
class Context:
    """What every run of one corpus shares."""

    s3: Any
    endpoint: str
    env: dict[str, str]
    bucket: str  # the corpus's bucket
    out_bucket: str  # archives land here, one at a time
    workdir: Path  # key lists and specs
    timeout: float
    server_pid: int | None = None  # our own moto server: its CPU time is measured around every run
    python: str = sys.executable  # the interpreter every contender runs on (--python)


@dataclass
class Outcome:
    contender: str
    run: int
    ok: bool
    seconds: float | None = None
    peak_rss: int | None = None
    output_bytes: int | None = None
    server_cpu: float | None = None  # seconds of CPU the S3 server spent during the run
    own_cpu: float | None = None  # seconds of CPU the contender's process spent
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


def compile_bytecode() -> None:
    """Write bucketzip's and bench's bytecode before the first cold run, as installing a package does. Without
    it (a checkout never imported, or PYTHONDONTWRITEBYTECODE set, as on some CI machines) every run of a
    contender compiles its modules from source again: ~45 ms of each cold ``bucketzip run`` here."""
    import bucketzip

    for package in (Path(bucketzip.__file__).parent, Path(__file__).parent):
        compileall.compile_dir(package, quiet=1)


def bucketzip_command(python: str = sys.executable) -> list[str]:
    script = Path(python).parent / "bucketzip"
    return [str(script)] if script.exists() else [python, "-m", "bucketzip"]


def _argv(ctx: Context, c: corpora.Corpus, contender: str, dest: str, keys: Path, out_bytes: int) -> list[str]:
    if contender == "naive":
        return [
            ctx.python,
            "-m",
            "bench.naive",
            "--endpoint",
            ctx.endpoint,
            "--keys-file",
            str(keys),
            "--out",
            dest,
        ]
    if contender == "bound":
        sink = ["--write-to", dest, "--write-bytes", str(out_bytes)]
        return [ctx.python, "-m", "bench.bound", "--endpoint", ctx.endpoint, "--keys-file", str(keys), *sink]
    spec = {"sources": [{"url": f"s3://{ctx.bucket}/{c.prefix}"}], "destination": dest, "compression": "auto"}
    spec_file = ctx.workdir / f"{c.name}-spec.json"
    spec_file.write_text(json.dumps(spec))
    return [*bucketzip_command(ctx.python), "run", str(spec_file)]


def bench_corpus(ctx: Context, c: corpora.Corpus, contenders: list[str], runs: int) -> list[Outcome]:
    keys_file = ctx.workdir / f"{c.name}-keys.txt"
    keys_file.write_text("".join(f"s3://{ctx.bucket}/{o.key}\n" for o in c.objects))
    outcomes: list[Outcome] = []
    failed: set[str] = set()
    verified: set[str] = set()
    for i in range(runs):
        for contender in contenders[i % len(contenders) :] + contenders[: i % len(contenders)]:
            if contender in failed:
                continue
            if ctx.server_pid:
                settle(ctx.server_pid)
            # The bound writes as many bytes as bucketzip's archive (naive's while bucketzip has none).
            sizes = {o.contender: o.output_bytes for o in outcomes if o.ok and o.output_bytes}
            out_bytes = sizes.get("bucketzip") or sizes.get("naive") or c.input_bytes
            key = f"{c.name}/{contender}-{i}.zip"
            dest = f"s3://{ctx.out_bucket}/{key}"
            cpu_before = cpu_seconds(ctx.server_pid) if ctx.server_pid else None
            m = run(_argv(ctx, c, contender, dest, keys_file, out_bytes), ctx.env, ctx.timeout)
            server_cpu = cpu_seconds(ctx.server_pid) - cpu_before if ctx.server_pid and cpu_before is not None else None
            outcome = _judge(ctx, c, contender, i, key, m, check=contender not in verified)
            outcome.server_cpu = server_cpu
            if outcome.ok and contender != "bound":
                verified.add(contender)
            corpora.delete(ctx.s3, ctx.out_bucket, f"{c.name}/")
            outcomes.append(outcome)
            _print(c, runs, outcome, m)
            if not outcome.ok:
                failed.add(contender)  # a broken contender stays broken: don't spend the other runs on it
    return outcomes


def settle(pid: int, quiet: float = 0.3, limit: float = 15.0) -> None:
    """Wait until process ``pid`` has used (almost) no CPU for ``quiet`` seconds, or ``limit`` has passed."""
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - before < 0.02:
            return
        before = now


def _judge(ctx: Context, c: corpora.Corpus, contender: str, i: int, key: str, m: Measured, check: bool) -> Outcome:
    outcome = Outcome(contender, i, ok=False, seconds=m.seconds, peak_rss=m.peak_rss, own_cpu=m.cpu)
    if not m.ok:
        why = "timed out" if m.timed_out else f"exited {m.returncode}"
        outcome.error = f"{why}; stderr:\n{m.tail()}"
        return outcome
    try:
        outcome.result = m.result()
    except ValueError as exc:
        outcome.error = str(exc)
        return outcome
    if contender == "bound":
        outcome.seconds = float(outcome.result["duration"])  # the transfers alone, not the interpreter
        outcome.ok = True
        return outcome
    try:
        outcome.output_bytes = int(ctx.s3.head_object(Bucket=ctx.out_bucket, Key=key)["ContentLength"])
        if check:
            verify(ctx.s3, ctx.out_bucket, key, len(c.objects), c.input_bytes)
    except VerifyError as exc:
        outcome.error = f"archive failed verification: {exc}"
        return outcome
    except Exception as exc:  # a missing archive fails the run, not the benchmark
        outcome.error = f"archive not readable: {exc!r}"
        return outcome
    outcome.ok = True
    return outcome


def _print(c: corpora.Corpus, runs: int, o: Outcome, m: Measured) -> None:
    head = f"  {c.name} run {o.run + 1}/{runs} {o.contender:9}"
    if not o.ok:
        print(f"{head} FAILED after {m.seconds:.1f} s: {o.error}", file=sys.stderr, flush=True)
        return
    rss = (o.peak_rss or 0) / 2**20
    extra = f", server CPU {o.server_cpu:.2f} s" if o.server_cpu is not None else ""
    if o.contender == "bound":
        r = o.result
        extra += f" (read {r['read_seconds']:.2f} s, write {r['write_seconds']:.2f} s"
        extra += f" of which complete {r['complete_seconds']:.2f} s)"
    elif o.output_bytes:
        extra += f", archive {o.output_bytes / 1e6:.1f} MB"
    print(f"{head} {o.seconds:8.2f} s, peak RSS {rss:.0f} MiB{extra}", file=sys.stderr, flush=True)


def child_env(endpoint: str, local: bool) -> dict[str, str]:
    """The contenders' environment: the endpoint and, for our own moto, its dummy credentials."""
    env = dict(os.environ)
    env["AWS_ENDPOINT_URL_S3"] = endpoint
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # never wait on an instance-metadata lookup
    # A benchmark's archives are not the user's: `bucketzip run` would record them in the catalog of whatever
    # Redis answers (~0.1 s a run when one does). BUCKETZIP_RUN_CATALOG=auto in the environment measures that too.
    env.setdefault("BUCKETZIP_RUN_CATALOG", "off")
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    for name, value in creds.items():
        if local:
            env[name] = value
        else:
            env.setdefault(name, value)
    if local:
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
    return env


def harness_s3(url: str, env: dict[str, str], buckets: tuple[str, ...], connections: int = 10) -> Any:
    """The harness's own boto3 client on ``url`` (not a contender's), with the contenders' credentials and
    region from ``env``; ``buckets`` are made if they are not there yet."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=url,
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(max_pool_connections=connections),
    )
    for bucket in buckets:
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
    return s3
