"""The registry on fakeredis (fast, no server), plus one round trip against the real Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest

from bucketzip.config import Settings
from bucketzip.errors import SourceMissing, TransientError
from bucketzip.lifecycle import Lease, Lifecycle
from bucketzip.registry import (
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    Job,
    Registry,
    error_record,
    redis_client,
)

RESULT = {"destination": "s3://b/out.zip", "size": 10, "etag": '"e"', "version_id": "v1", "entries": 2}


@pytest.fixture
def fake() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def registry(fake: Any) -> Registry:
    return Registry(Settings(key_prefix="t"), fake)


def queue(registry: Registry, *ids: str) -> None:
    registry.queued([(i, {"destination": f"s3://b/{i}.zip"}, f"s3://b/{i}.zip") for i in ids])


def run(registry: Registry, job_id: str) -> tuple[Lifecycle, Lease]:
    """Start ``job_id`` as a worker would: take its lease, make it this run's."""
    life = Lifecycle(registry, registry.redis)
    lease = life.lease(job_id, f"s3://b/{job_id}.zip")
    assert lease.acquire()
    assert life.start(job_id, {"destination": f"s3://b/{job_id}.zip"}, f"s3://b/{job_id}.zip", "host:1", lease).run
    return life, lease


def succeed(registry: Registry, job_id: str, result: dict[str, Any]) -> None:
    life, lease = run(registry, job_id)
    assert life.finish(
        job_id,
        lease,
        SUCCEEDED,
        {"result": json.dumps(result)},
        lambda pipe: registry.add_archive(pipe, job_id, result, registry.get(job_id).upload_id),  # type: ignore[union-attr]
    )
    lease.release()


def fail(registry: Registry, job_id: str, exc: Exception, state: str = FAILED) -> None:
    life, lease = run(registry, job_id)
    assert life.finish(job_id, lease, state, {"error": json.dumps(error_record(exc))})
    lease.release()


def test_a_job_goes_through_its_states(registry: Registry) -> None:
    queue(registry, "j1")
    job = registry.get("j1")
    assert job is not None and job.state == QUEUED and job.runs == 0 and job.attempt == 1 and job.created
    life, lease = run(registry, "j1")
    registry.upload_started("j1", "s3://b/j1.zip", "up-1")
    assert registry.upload_owner("up-1") == "j1"
    assert life.finish(
        "j1", lease, SUCCEEDED, {"result": json.dumps(RESULT)}, lambda p: registry.add_archive(p, "j1", RESULT, "up-1")
    )
    job = registry.get("j1")
    assert job is not None
    assert (job.state, job.runs, job.worker, job.result) == (SUCCEEDED, 1, "host:1", RESULT)
    assert job.finished is not None and job.finished >= job.started >= job.created  # type: ignore[operator]
    assert registry.upload_owner("up-1") is None  # a finished job's upload is no longer the sweeper's concern
    assert [j.id for j in registry.jobs(SUCCEEDED)] == ["j1"]
    assert registry.jobs(QUEUED) == [] and registry.jobs(RUNNING) == []
    assert registry.buckets() == {"b"}
    [entry] = registry.archives()
    assert entry["job_id"] == "j1" and entry["version_id"] == "v1" and entry["size"] == 10


def test_errors_are_recorded_by_type_message_and_args(registry: Registry) -> None:
    queue(registry, "j1", "j2")
    fail(registry, "j1", SourceMissing(["s3://b/x"]))
    fail(registry, "j2", TransientError("s3://b/y", "SlowDown"), RETRYING)
    j1, j2 = registry.get("j1"), registry.get("j2")
    assert j1 is not None and j2 is not None
    assert j1.error == {"type": "SourceMissing", "message": "1 source(s) not found: s3://b/x", "args": [["s3://b/x"]]}
    assert j1.finished is not None and j2.finished is None
    assert [j.id for j in registry.jobs(FAILED)] == ["j1"] and [j.id for j in registry.jobs(RETRYING)] == ["j2"]
    assert registry.counts()[FAILED] == 1


def test_lists_are_newest_first(registry: Registry) -> None:
    for i in range(5):
        queue(registry, f"j{i}")
        time.sleep(0.002)
    assert [j.id for j in registry.jobs()] == ["j4", "j3", "j2", "j1", "j0"]
    assert [j.id for j in registry.jobs(QUEUED, limit=2)] == ["j4", "j3"]


def test_retention_by_count_and_age_drops_only_finished_jobs(fake: Any) -> None:
    registry = Registry(Settings(key_prefix="t", max_jobs_recorded=3, job_retention=3600), fake)
    for i in range(5):
        queue(registry, f"j{i}")
        time.sleep(0.002)
    # Five queued jobs and room for three: none is dropped, since none has finished.
    assert [j.id for j in registry.jobs()] == ["j4", "j3", "j2", "j1", "j0"]
    assert fake.ttl("t:job:j0") == -1  # an active job's record never expires
    for i in (0, 1, 3):
        succeed(registry, f"j{i}", RESULT)
    assert fake.ttl("t:job:j3") > 3000  # a finished one does
    assert registry.trim() == 2  # the two oldest finished jobs, not the oldest jobs
    assert [j.id for j in registry.jobs()] == ["j4", "j3", "j2"]
    fake.zadd("t:finished", {"j3": time.time() - 7200})  # finished two hours ago
    assert registry.trim() == 1
    assert [j.id for j in registry.jobs()] == ["j4", "j2"] and [j.id for j in registry.jobs(QUEUED)] == ["j4", "j2"]


def test_a_big_batch_keeps_every_queued_record(redis_url: str, queue_prefix: str) -> None:
    """12,000 queued jobs against the default of 10,000 recorded: every one can still be followed."""
    registry = Registry(Settings(redis_url=redis_url, key_prefix=queue_prefix))
    for start in range(0, 12_000, 1_000):
        registry.queued([(f"j{i}", {}, f"s3://b/{i}.zip") for i in range(start, start + 1_000)])
    assert registry.counts()[QUEUED] == 12_000
    assert registry.get("j0") is not None and registry.get("j11999") is not None


def test_claim_reserves_ids_once_and_returns_the_spec_recorded(registry: Registry) -> None:
    assert registry.claim([("a", {"x": 1}), ("b", {"x": 2})]) == [None, None]
    assert registry.claim([("b", {"x": 3}), ("c", {"x": 4})]) == [{"x": 2}, None]
    assert registry.claim_retry("a", "a2") and not registry.claim_retry("a", "a3")


def test_lease_is_exclusive_per_job_and_per_destination(registry: Registry, fake: Any) -> None:
    life = Lifecycle(registry, fake)
    first = life.lease("j1", "s3://b/out.zip")
    assert first.acquire()
    assert registry.is_running("j1")
    assert not life.lease("j1", "s3://b/elsewhere.zip").acquire()  # the same job, delivered twice
    other = life.lease("j2", "s3://b/out.zip")
    assert not other.acquire()  # another job writing the same object
    assert not fake.exists("t:lock:job:j2")  # a failed acquire leaves nothing held
    first.release()
    assert not registry.is_running("j1")
    assert other.acquire()
    other.release()


def test_lease_expires_renews_and_is_released_only_by_its_holder(fake: Any) -> None:
    lease = Lease(fake, ["k1", "k2"], ttl=0.2)
    assert lease.acquire()
    assert lease.renew() and 0 < fake.pttl("k1") <= 200
    intruder = Lease(fake, ["k1"], ttl=10)
    assert not intruder.acquire()
    time.sleep(0.25)  # the holder died: its lease ran out (time passing is what is tested)
    assert intruder.acquire()
    assert not lease.renew()  # the old holder finds it lost
    lease.release()  # and must not free what it no longer holds
    assert fake.get("k1") == intruder.token
    intruder.release()
    assert not fake.exists("k1")


def test_a_lease_whose_keys_vanished_is_taken_back(fake: Any) -> None:
    """Redis restarted without persistence: the keys are gone and nobody else took them."""
    lease = Lease(fake, ["k1", "k2"], ttl=10)
    assert lease.acquire()
    fake.flushall()
    assert lease.renew() and lease.held()


def test_job_record_round_trip() -> None:
    job = Job(id="x", state=QUEUED, spec={"a": 1}, attempt=2, runs=3, created=1.5, result={"size": 1})
    data = {k: json.dumps(v) if k in ("spec", "result", "error") else str(v) for k, v in job.to_dict().items()}
    data = {k: v for k, v in data.items() if v not in ("None", "null")}
    assert Job.from_hash(data) == job


def test_error_record_keeps_arguments_json_friendly() -> None:
    record = error_record(ValueError(object()))
    assert record["type"] == "ValueError" and isinstance(record["args"][0], str)


def test_against_real_redis(redis_url: str, queue_prefix: str) -> None:
    registry = Registry(Settings(redis_url=redis_url, key_prefix=queue_prefix))
    assert registry.redis is redis_client(redis_url)  # one pool per URL per process
    queue(registry, "j1")
    succeed(registry, "j1", RESULT)
    assert registry.get("j1").state == SUCCEEDED  # type: ignore[union-attr]
    assert registry.archives()[0]["job_id"] == "j1"


def test_served_over_tcp_by_fakeredis() -> None:
    """The demo's fallback registry: fakeredis's TcpFakeServer, reached over TCP like any Redis."""
    import threading

    from fakeredis import TcpFakeServer

    from bucketzip.devserver import free_port

    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        registry = Registry(Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="demo"))
        queue(registry, "j1")
        life = Lifecycle(registry)  # its lease client, with timeouts, over TCP
        lease = life.lease("j1", "s3://b/j1.zip")
        assert lease.acquire() and lease.renew() and registry.is_running("j1")
        assert life.start("j1", {}, "s3://b/j1.zip", "w", lease).run
        life.fence("j1", lease, {})
        assert life.finish("j1", lease, SUCCEEDED, {"result": json.dumps(RESULT)})
        registry.add_archive(registry.redis, "j1", RESULT, None)
        lease.release()
        assert registry.get("j1").state == SUCCEEDED and not registry.is_running("j1")  # type: ignore[union-attr]
        assert registry.archives()[0]["job_id"] == "j1"
    finally:
        server.shutdown()
        server.server_close()


def test_every_registry_call_times_out() -> None:
    kwargs = redis_client("redis://127.0.0.1:1/0").connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] and kwargs["socket_connect_timeout"]
