"""``python -m bench.load``: the queue under load, and the latency of one job on a warm worker.

1. **Load.** ``--jobs`` small jobs (one ~1 KiB object each, a single-PUT archive) submitted in bulk to two
   worker processes (``celery worker --pool=prefork -c 1``), with a private Redis (AOF, fsync always) restarted
   once half of them have succeeded. Checked: every submitted job ends succeeded; its record is kept (none
   lost while the job was unfinished, none wrong at the end); exactly one catalog entry and one archive per
   job. Reported: jobs/s before and after the restart, the restart's downtime.
2. **Latency.** Submit-to-succeeded of a 20-object, 5 MiB job, one after another on the warm workers: p50 and
   p99, against the engine's own duration of the same job (the difference is the queue's overhead).

Everything runs on this machine: a moto server, the private redis-server, the workers. The shared Redis at
6379 is never touched. Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3

from bucketzip.catalog import Catalog
from bucketzip.client import Client
from bucketzip.config import Settings
from bucketzip.devserver import free_port, moto_process, redis_process, worker_process
from bucketzip.registry import SUCCEEDED, TERMINAL, Registry

SOURCE, OUT = "load-src", "load-out"
SMALL_OBJECTS = 100  # jobs share these sources (job i reads object i % 100)
LATENCY_OBJECTS, LATENCY_OBJECT_SIZE = 20, 256 * 2**10  # 5 MiB in 20 objects, incompressible


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    p.add_argument(
        "--jobs", type=int, default=10_000, help="small jobs in the load run, 0: none (default: %(default)s)"
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes, one job each (default: %(default)s)")
    p.add_argument("--restart-at", type=float, default=0.5, help="fraction succeeded when Redis restarts (0: never)")
    p.add_argument(
        "--max-recorded", type=int, help="BUCKETZIP_MAX_JOBS_RECORDED for the run (default: the setting's default)"
    )
    p.add_argument("--latency-runs", type=int, default=40, help="sequential 5 MiB jobs timed (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before the load run gives up")
    return p.parse_args(argv)


@contextlib.contextmanager
def services(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, str], Any]]:
    with tempfile.TemporaryDirectory(prefix="bz-load-") as tmp, moto_process() as (moto_url, _):
        port = free_port()
        env = {
            "AWS_ENDPOINT_URL_S3": moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "BUCKETZIP_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "BUCKETZIP_KEY_PREFIX": f"load-{uuid.uuid4().hex[:6]}",
            "BUCKETZIP_DEFLATE_THREADS": "1",
        }
        if args.max_recorded:
            env["BUCKETZIP_MAX_JOBS_RECORDED"] = str(args.max_recorded)
        s3 = boto3.client(
            "s3",
            endpoint_url=moto_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        yield tmp, env, s3


class Watch:
    """Reads the registry while the load runs: the catalog (incrementally), and which submitted jobs have no
    record although they are unfinished (every ``check_every`` looks: 10,000 EXISTS are cheap, not free)."""

    def __init__(self, registry: Registry, ids: list[str], check_every: int = 5) -> None:
        self.registry, self.ids, self.check_every = registry, ids, check_every
        self.catalog_key = Catalog(registry.settings, registry.redis).key("job")
        self.looks = 0
        self.missing_unfinished = 0  # the most records seen missing at once for jobs not yet in the catalog

    def catalogued(self) -> dict[str, int]:
        """Catalog records per job id (the catalog's job index holds ``<job id>\\0<record id>``)."""
        members = self.registry.redis.zrange(self.catalog_key, 0, -1)
        counts: dict[str, int] = {}
        for member in members:
            job_id = member.partition("\0")[0]
            counts[job_id] = counts.get(job_id, 0) + 1
        return counts

    def missing(self) -> int:
        with self.registry.redis.pipeline(transaction=False) as pipe:
            for job_id in self.ids:
                pipe.exists(self.registry.key("job", job_id))
            present = pipe.execute()
        done = self.catalogued()
        missing = sum(1 for i, p in zip(self.ids, present, strict=True) if not p and i not in done)
        self.missing_unfinished = max(self.missing_unfinished, missing)
        return missing

    def look(self) -> int:
        """How many submitted jobs have succeeded (per the catalog); notes records missing meanwhile."""
        self.looks += 1
        if self.looks % self.check_every == 0:
            self.missing()
        done = self.catalogued()
        return sum(1 for i in self.ids if i in done)


def load(args: argparse.Namespace, tmp: str, env: dict[str, str], s3: Any) -> dict[str, Any]:
    port = int(env["BUCKETZIP_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    data = os.path.join(tmp, "redis")
    os.makedirs(data)
    for i in range(SMALL_OBJECTS):
        s3.put_object(Bucket=SOURCE, Key=f"small/{i:03d}.txt", Body=(f"object {i} " * 100).encode())
    specs = [
        {"sources": [f"s3://{SOURCE}/small/{i % SMALL_OBJECTS:03d}.txt"], "destination": f"s3://{OUT}/load/{i}.zip"}
        for i in range(args.jobs)
    ]
    figures: dict[str, Any] = {"jobs": args.jobs, "workers": args.workers}
    first = contextlib.ExitStack()
    first.enter_context(redis_process(port, data))
    with contextlib.ExitStack() as stack:
        settings = Settings.from_env(env)
        client = Client(settings)
        registry = Registry(settings)
        t0 = time.monotonic()
        batch = client.submit_many(specs)
        ids = [h.id for h in batch.accepted]
        figures["submit_seconds"] = time.monotonic() - t0
        figures["accepted"] = len(ids)
        log(f"submitted {len(ids)} jobs in {figures['submit_seconds']:.1f}s")
        for n in range(args.workers):
            logfile = stack.enter_context(open(os.path.join(tmp, f"worker{n}.log"), "wb"))
            stack.enter_context(worker_process(env, f"load{n}-{uuid.uuid4().hex[:4]}", logfile))
        watch = Watch(registry, ids)
        start = time.monotonic()
        restart_at = int(args.restart_at * len(ids)) if args.restart_at else None
        done = last = 0
        while done < len(ids):
            if time.monotonic() - start > args.timeout:
                log(f"gave up after {args.timeout}s")
                break
            try:
                done = watch.look()
            except Exception as exc:  # Redis restarting
                log(f"registry unreachable: {type(exc).__name__}")
                time.sleep(0.5)
                continue
            if done != last and watch.looks % 10 == 0:
                log(f"{done}/{len(ids)} succeeded, {registry.counts()}")
                last = done
            if restart_at is not None and done >= restart_at and "restart_seconds" not in figures:
                figures["before_restart"] = (done, time.monotonic() - start)
                down = time.monotonic()
                first.close()  # SIGTERM: Redis writes its AOF and exits
                first.enter_context(redis_process(port, data))
                figures["restart_seconds"] = time.monotonic() - down
                figures["restarted_at"] = (done, time.monotonic() - start)
                log(f"Redis restarted in {figures['restart_seconds']:.2f}s with {done} jobs succeeded")
            time.sleep(2.0)
        figures["load_seconds"] = time.monotonic() - start
        figures["succeeded"] = done
        watch.missing()
        figures["missing_unfinished_max"] = watch.missing_unfinished
        jobs = {j.id: j for j in registry.get_many(ids)}
        catalog = watch.catalogued()
        figures["records_kept"] = len(jobs)
        figures["records_succeeded"] = sum(1 for j in jobs.values() if j.state == SUCCEEDED)
        figures["records_unfinished"] = sum(1 for j in jobs.values() if j.state not in TERMINAL)
        figures["lost"] = sum(1 for i in ids if i not in catalog)
        figures["catalogued_twice"] = sum(1 for n in catalog.values() if n > 1)
        figures["archives"] = sum(
            len(page.get("Contents", []))
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=OUT, Prefix="load/")
        )
        figures["states"] = registry.counts()
        # A job's message is acknowledged just after its success is recorded: give the last ones a moment.
        unacked_key = f"{settings.key_prefix}:unacked"
        deadline = time.monotonic() + 30
        while registry.redis.hlen(unacked_key) and time.monotonic() < deadline:
            time.sleep(0.2)
        figures["unacked_at_end"] = registry.redis.hlen(unacked_key)
        latency = measure_latency(args, client, s3)
        client.close()
    first.close()
    figures["latency"] = latency
    return figures


def measure_latency(args: argparse.Namespace, client: Client, s3: Any) -> dict[str, Any]:
    for i in range(LATENCY_OBJECTS):
        s3.put_object(Bucket=SOURCE, Key=f"latency/{i:02d}.bin", Body=os.urandom(LATENCY_OBJECT_SIZE))

    def spec(n: int) -> dict[str, Any]:
        # Each run its own destination: a run that follows another to the same key at once finds the
        # destination's lease still held by the finished run and steps aside for LOCK_TTL/2 (see bench/README).
        return {"sources": [f"s3://{SOURCE}/latency/"], "destination": f"s3://{OUT}/latency/{n}.zip"}

    client.submit(spec(0)).wait(120)  # warm up: imports, clients, connections
    seconds, durations = [], []
    for n in range(1, args.latency_runs + 1):
        t0 = time.monotonic()
        handle = client.submit(spec(n))
        while (job := client.registry.get(handle.id)) is None or job.state != SUCCEEDED:
            if job is not None and job.state in TERMINAL:
                raise RuntimeError(f"latency job {handle.id} ended {job.state}: {job.error}")
            time.sleep(0.002)
        seconds.append(time.monotonic() - t0)
        assert job.result is not None
        durations.append(job.result["duration"])
    seconds.sort()
    return {
        "runs": len(seconds),
        "p50": statistics.median(seconds),
        "p99": seconds[min(len(seconds) - 1, round(0.99 * (len(seconds) - 1)))],
        "max": seconds[-1],
        "engine_p50": statistics.median(durations),
    }


def report(f: dict[str, Any]) -> str:
    n_before, t_before = f.get("before_restart", (f["succeeded"], f["load_seconds"]))
    n_after, t_after = f["succeeded"] - n_before, f["load_seconds"] - t_before
    rate = f["succeeded"] / f["load_seconds"] if f["load_seconds"] else 0.0
    lines = [
        f"\nLoad: {f['jobs']:,} jobs of one ~1 KiB object, {f['workers']} worker processes (prefork, -c 1)",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| submitted (submit_many) | {f['accepted']:,} in {f['submit_seconds']:.1f} s |",
        f"| succeeded | {f['succeeded']:,} in {f['load_seconds']:.1f} s: **{rate:.1f} jobs/s** |",
        f"| before the restart (workers' start-up included) | {n_before:,} in {t_before:.1f} s: "
        f"{n_before / max(t_before, 1e-9):.1f} jobs/s |",
        f"| after the restart (downtime included) | {n_after:,} in {t_after:.1f} s: "
        f"{n_after / max(t_after, 1e-9):.1f} jobs/s |",
        f"| Redis restart (AOF), down for | {f.get('restart_seconds', 0):.2f} s |",
        f"| jobs lost (no archive in the catalog) | {f['lost']} |",
        f"| archives in the bucket / catalogued twice | {f['archives']:,} / {f['catalogued_twice']} |",
        f"| records kept at the end / succeeded / unfinished | {f['records_kept']:,} / {f['records_succeeded']:,} / "
        f"{f['records_unfinished']} |",
        f"| most records missing at once for unfinished jobs | {f['missing_unfinished_max']} |",
        f"| messages unacknowledged at the end | {f['unacked_at_end']} |",
    ]
    if not f["jobs"]:  # --jobs 0: the latency alone
        lines = []
    lat = f["latency"]
    lines += [
        "",
        f"Latency: submit to succeeded of a {LATENCY_OBJECTS}-object, "
        f"{LATENCY_OBJECTS * LATENCY_OBJECT_SIZE // 2**20} MiB job on a warm worker, {lat['runs']} runs in a row",
        "",
        "| p50 s | p99 s | max s | engine's own duration p50 s | queue overhead p50 s |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {lat['p50']:.3f} | {lat['p99']:.3f} | {lat['max']:.3f} | {lat['engine_p50']:.3f} | "
        f"{lat['p50'] - lat['engine_p50']:.3f} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    log(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    with services(args) as (tmp, env, s3):
        s3.create_bucket(Bucket=SOURCE)
        s3.create_bucket(Bucket=OUT)
        figures = load(args, tmp, env, s3)
    figures["loadavg"] = os.getloadavg()[0]
    print(report(figures))
    print(f"load average at the end: {figures['loadavg']:.2f}")
    ok = figures["lost"] == 0 and figures["catalogued_twice"] == 0 and figures["records_unfinished"] == 0
    ok = ok and figures["missing_unfinished_max"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
