"""``python -m bench.web``: how fast the HTTP API and the dashboard answer with many jobs recorded.

Records ``--jobs`` jobs (default 100,000) under a private Redis key prefix (nothing is queued: the records are
written as the producer and the workers write them, in pipelined batches), in the mix a busy deployment has:
mostly succeeded (each with its archive in the catalog), some failed, a few running, the rest queued. Then it
starts ``uvicorn --factory bucketzip.web.app:create_app`` in its own process and times each endpoint over
real HTTP, ``--requests`` times, printing the median and the 95th percentile. The prefix is deleted at the end.

Needs Redis at ``BUCKETZIP_REDIS_URL`` (default 127.0.0.1:6379) and the ``web`` extra.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from bucketzip.config import Settings
from bucketzip.errors import SourceMissing
from bucketzip.lifecycle import write_state
from bucketzip.registry import FAILED, RUNNING, SUCCEEDED, Registry, error_record

TOKEN = "bench-admin-token-0123456789"
BATCH = 1_000


def record(registry: Registry, n: int) -> dict[str, str]:
    """Record ``n`` jobs: 70% succeeded, 5% failed, 20 running, the rest queued. Returns one id per state."""
    redis = registry.redis
    now = time.time()
    sample: dict[str, str] = {}
    failed_error = error_record(SourceMissing(["s3://photos/2024/missing.jpg"]))
    for start in range(0, n, BATCH):
        jobs = []
        for i in range(start, min(n, start + BATCH)):
            job_id = f"bench-{i:07d}"
            destination = f"s3://exports/user-{i % 997}/{i}.zip"
            jobs.append((job_id, {"sources": [f"s3://photos/{i}/"], "destination": destination}, destination))
        registry.queued(jobs)
        with redis.pipeline(transaction=False) as pipe:
            for job_id, _, destination in jobs:
                i = int(job_id.rsplit("-", 1)[1])
                t = now - (n - i)  # one a second, oldest first
                if i % 20 == 0:
                    state, extra = FAILED, {"error": json_dumps(failed_error), "finished": t + 5}
                elif i >= n - 20:
                    state, extra = RUNNING, {"started": t, "worker": "bench:1"}
                elif i % 10 < 7:
                    result = {"destination": destination, "size": 2**20, "entries": 10, "etag": '"e"'}
                    state, extra = SUCCEEDED, {"result": json_dumps(result), "finished": t + 5}
                    registry.add_archive(pipe, job_id, result, None)
                else:
                    continue
                write_state(registry, pipe, job_id, state, t, extra)
                sample.setdefault(state, job_id)
            pipe.execute()
    sample.setdefault("queued", f"bench-{n - 21:07d}")
    return sample


def json_dumps(value: Any, sort_keys: bool = False) -> str:
    import json

    return json.dumps(value, sort_keys=sort_keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per endpoint")
    args = parser.parse_args()

    prefix = f"bzbench-web-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BUCKETZIP_KEY_PREFIX": prefix,
        "BUCKETZIP_QUEUE": prefix,
        "BUCKETZIP_MAX_JOBS_RECORDED": str(args.jobs * 2),
        "BUCKETZIP_API_TOKENS": f"admin:{TOKEN}",
    }
    settings = Settings.from_env(env)
    registry = Registry(settings)
    started = time.perf_counter()
    sample = record(registry, args.jobs)
    print(f"recorded {args.jobs:,} jobs in {time.perf_counter() - started:.1f}s; counts: {registry.counts()}")

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bucketzip.web.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get("/healthz")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            deep = http.get("/v1/jobs", params={"limit": 50}).json()["next"]
            for _ in range(min(200, args.jobs // 50 - 2)):  # up to 10,000 jobs down: a cursor deep in the list
                deep = http.get("/v1/jobs", params={"limit": 50, "cursor": deep}).json()["next"]
            endpoints = [
                ("GET /v1/jobs (newest 50)", "/v1/jobs?limit=50"),
                ("GET /v1/jobs, page 201 by cursor", f"/v1/jobs?limit=50&cursor={deep}"),
                ("GET /v1/jobs?state=failed", "/v1/jobs?state=failed&limit=50"),
                ("GET /v1/jobs?state=running (progress)", "/v1/jobs?state=running&limit=50"),
                ("GET /v1/jobs/{id}", f"/v1/jobs/{sample[SUCCEEDED]}"),
                ("GET /v1/stats", "/v1/stats"),
                ("GET /v1/archives (newest 50)", "/v1/archives?limit=50"),
                ("GET /v1/archives?prefix= (1 in 997)", "/v1/archives?limit=50&prefix=s3://exports/user-5/"),
                ("GET / (dashboard, running tab)", "/?state=running"),
                ("GET / (dashboard, succeeded tab)", "/?state=succeeded"),
                ("GET /partials/board (the 1 s refresh)", "/partials/board?state=running"),
                ("GET /jobs/{id} (job page)", f"/jobs/{sample[FAILED]}"),
                ("GET /metrics", "/metrics"),
            ]
            print(f"\n{args.requests} requests each, {args.jobs:,} jobs recorded\n")
            print("| endpoint | median ms | p95 ms | bytes |")
            print("| --- | ---: | ---: | ---: |")
            for name, path in endpoints:
                times = []
                size = 0
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    r = http.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200, (path, r.status_code, r.text[:200])
                    size = len(r.content)
                times.sort()
                p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
                print(f"| {name} | {statistics.median(times):.1f} | {p95:.1f} | {size:,} |")
    finally:
        server.terminate()
        server.wait(10)
        keys = list(registry.redis.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 5000):
            registry.redis.delete(*keys[i : i + 5000])


if __name__ == "__main__":
    main()
