"""The producer API against real Redis, the moto server and a real embedded worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

import bucketzip
import bucketzip.client
from bucketzip.errors import InvalidJob, JobConflict, JobStateError, UnknownJob
from bucketzip.registry import QUEUED, SUCCEEDED
from tests.conftest import queue_env
from tests.helpers import fetch_archive


def queue_length(settings: Any) -> int:
    return int(redis.Redis.from_url(settings.redis_url).llen(f"{settings.key_prefix}:{settings.queue}"))


def small_spec(bucket: str, i: int) -> dict[str, Any]:
    return {"sources": [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/out/{i}.zip"}


def test_submit_validates_before_anything_is_queued(client: Any, queue_settings: Any) -> None:
    with pytest.raises(InvalidJob) as caught:
        client.submit({"sources": ["s3://bucket/a"], "destination": "s3://bucket/"})
    assert caught.value.field == "destination"
    assert client.jobs() == [] and queue_length(queue_settings) == 0


def test_submit_many_reports_invalid_items_by_position(client: Any, queue_settings: Any) -> None:
    specs = [small_spec("bkt", 0), {"sources": []}, small_spec("bkt", 2), {"destination": 3}]
    batch = client.submit_many(specs)
    assert [i for i, _ in batch.invalid] == [1, 3]
    assert [e.field for _, e in batch.invalid] == ["sources", "sources"]
    assert len(batch.accepted) == 2 and queue_length(queue_settings) == 2
    assert {j.id for j in client.jobs(QUEUED)} == {h.id for h in batch.accepted}
    assert client.status(batch.accepted[0].id).spec["destination"] == "s3://bkt/out/0.zip"


def test_a_job_id_is_submitted_once(client: Any, queue_settings: Any) -> None:
    first = client.submit({**small_spec("bkt", 0), "job_id": "order-42"})
    again = client.submit({**small_spec("bkt", 0), "job_id": "order-42"})
    assert first.id == again.id == "order-42"
    assert queue_length(queue_settings) == 1 and len(client.jobs()) == 1


def test_the_same_job_id_with_another_spec_is_a_conflict(client: Any, queue_settings: Any) -> None:
    client.submit({**small_spec("bkt", 0), "job_id": "order-43"})
    with pytest.raises(JobConflict) as caught:
        client.submit({**small_spec("bkt", 1), "job_id": "order-43"})
    assert (
        caught.value.field == "job_id" and "'order-43'" in str(caught.value) and "different spec" in str(caught.value)
    )
    batch = client.submit_many(
        [
            {**small_spec("bkt", 2), "job_id": "fresh-1"},
            {**small_spec("bkt", 3), "job_id": "order-43"},
            small_spec("bkt", 4),
        ]
    )
    assert [(i, type(e).__name__) for i, e in batch.invalid] == [(1, "JobConflict")]
    assert len(batch.accepted) == 2 and queue_length(queue_settings) == 3  # the conflict queued nothing
    assert client.status("order-43").spec["destination"] == "s3://bkt/out/0.zip"


def test_bulk_500_jobs_in_one_call_all_succeed(worker: Any, client: Any, s3: Any, make_bucket: Any) -> None:
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    batch = client.submit_many([small_spec(bucket, i) for i in range(500)])
    assert batch.invalid == [] and len(batch.accepted) == 500
    for handle in batch.accepted:
        handle.wait(120)
    assert {j.state for j in client.jobs(limit=1000)} == {SUCCEEDED}
    assert len(client.archives(limit=1000)) == 500
    for i in (0, 499):
        fetch_archive(s3, bucket, f"out/{i}.zip", {"a.txt": b"alpha"})


def test_submit_many_throughput(client: Any, queue_settings: Any) -> None:
    """Measured, not asserted: jobs per second enqueued by one submit_many call (no worker running)."""
    specs = [small_spec("bkt", i) for i in range(5000)]
    started = time.perf_counter()
    batch = client.submit_many(specs)
    elapsed = time.perf_counter() - started
    assert len(batch.accepted) == 5000 and queue_length(queue_settings) == 5000
    print(f"\nsubmit_many: 5000 jobs in {elapsed:.2f}s = {5000 / elapsed:.0f} jobs/s")
    started = time.perf_counter()
    for spec in specs[:500]:
        client.submit(spec)
    elapsed = time.perf_counter() - started
    print(f"submit (one by one): 500 jobs in {elapsed:.2f}s = {500 / elapsed:.0f} jobs/s")


def test_wait_times_out(client: Any) -> None:
    handle = client.submit(small_spec("bkt", 0))
    with pytest.raises(TimeoutError):
        handle.wait(0.3)


def test_unknown_jobs_and_wrong_states(client: Any) -> None:
    with pytest.raises(UnknownJob):
        client.status("nope")
    with pytest.raises(UnknownJob):
        client.retry("nope")
    with pytest.raises(UnknownJob):
        client.cancel("nope")
    handle = client.submit(small_spec("bkt", 0))
    with pytest.raises(JobStateError, match="only a failed or cancelled job can be retried"):
        client.retry(handle.id)


def test_module_level_api_uses_the_environment(
    monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    for name, value in queue_env(s3_env, redis_url, queue_prefix).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(bucketzip.client, "_default", None)
    handle = bucketzip.submit(small_spec("bkt", 0))
    assert bucketzip.status(handle.id).state == QUEUED
    assert [j.id for j in bucketzip.jobs()] == [handle.id]
    assert bucketzip.cancel(handle.id) == "cancelled"
    assert bucketzip.archives() == []
    bucketzip.client.default_client().close()


def test_a_producer_loads_neither_s3fs_nor_the_zip_writer(
    s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    code = (
        "import bucketzip.client, sys; "
        "h = bucketzip.client.submit({'sources': ['s3://bkt/a'], 'destination': 's3://bkt/a.zip'}); "
        "bucketzip.client.status(h.id); "
        "heavy = [m for m in ('s3fs', 'aiobotocore', 'bucketzip.archive', 'bucketzip.engine') if m in sys.modules]; "
        "assert not heavy, heavy; print(h.id)"
    )
    env = {**os.environ, **queue_env(s3_env, redis_url, queue_prefix)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) == 32
