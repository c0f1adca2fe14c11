"""The lifecycle's state machine, lease and heartbeat, on fakeredis (fast), plus its Redis client's timeouts."""

from __future__ import annotations

import json
import threading
from typing import Any

import fakeredis
import pytest

from bucketzip.config import Settings
from bucketzip.errors import JobCancelled, LeaseLost, SourceMissing
from bucketzip.lifecycle import (
    ALLOWED,
    CANCEL,
    CANCELLED,
    FAILED,
    LEASE,
    QUEUED,
    RETRIED,
    RUNNING,
    STATES,
    SUCCEEDED,
    TERMINAL,
    Heartbeat,
    Lease,
    Lifecycle,
    lease_client,
)
from bucketzip.registry import Registry, error_record

DEST = "s3://b/out.zip"


@pytest.fixture
def fake() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def life(fake: Any) -> Lifecycle:
    return Lifecycle(Registry(Settings(key_prefix="t", max_runs=3, lock_ttl=10), fake), fake)


def queued(life: Lifecycle, job_id: str = "j1") -> None:
    life.registry.queued([(job_id, {"destination": DEST}, DEST)])


def begin(life: Lifecycle, job_id: str = "j1") -> Lease:
    lease = life.lease(job_id, DEST)
    assert lease.acquire()
    assert life.start(job_id, {"destination": DEST}, DEST, "w:1", lease).run
    return lease


def state(life: Lifecycle, job_id: str = "j1") -> str | None:
    job = life.registry.get(job_id)
    return job.state if job else None


def test_the_table_never_leaves_a_terminal_state_but_to_be_retried() -> None:
    assert set(ALLOWED) == {None, *STATES}
    for terminal in TERMINAL:
        assert ALLOWED[terminal] <= {RETRIED}
    assert ALLOWED[SUCCEEDED] == frozenset()


def test_a_stale_run_cannot_write_over_the_run_that_holds_the_job(life: Lifecycle, fake: Any) -> None:
    queued(life)
    stale = begin(life)
    fake.delete("t:lock:job:j1", f"t:lock:dest:{DEST}")  # its lease expired (a stalled heartbeat)
    current = begin(life)  # and a second delivery took the job over
    assert not life.finish("j1", stale, CANCELLED, {"error": "{}"})
    with pytest.raises(LeaseLost):
        life.fence("j1", stale, {})
    assert state(life) == RUNNING
    life.fence("j1", current, {"entries": 3})
    assert life.finish("j1", current, SUCCEEDED, {"result": json.dumps({"size": 1})})
    assert state(life) == SUCCEEDED
    assert not life.finish("j1", current, FAILED, {})  # nothing overwrites a terminal state


def test_cancel_never_marks_a_finished_job(life: Lifecycle) -> None:
    queued(life)
    lease = begin(life)
    assert life.finish("j1", lease, SUCCEEDED, {"result": "{}"})
    assert life.cancel("j1") == SUCCEEDED and state(life) == SUCCEEDED
    assert life.cancel("nope") is None


def test_cancel_of_a_queued_job_is_immediate_and_its_delivery_does_not_run(life: Lifecycle) -> None:
    queued(life)
    assert life.cancel("j1") == CANCELLED and state(life) == CANCELLED
    lease = life.lease("j1", DEST)
    assert lease.acquire()
    start = life.start("j1", {}, DEST, "w", lease)
    assert not start.run and start.state == CANCELLED


def test_cancel_of_a_running_job_stops_it_at_the_fence(life: Lifecycle) -> None:
    queued(life)
    lease = begin(life)
    assert life.cancel("j1") == "cancelling"
    with pytest.raises(JobCancelled):
        life.fence("j1", lease, {})
    assert life.finish("j1", lease, CANCELLED, {"error": json.dumps(error_record(JobCancelled("j1")))})
    assert state(life) == CANCELLED


def test_a_cancel_after_the_fence_does_not_stop_the_publication(life: Lifecycle) -> None:
    queued(life)
    lease = begin(life)
    life.fence("j1", lease, {"entries": 1})
    assert life.cancel("j1") == "cancelling"  # too late: the archive is being published
    assert life.finish("j1", lease, SUCCEEDED, {"result": "{}"})
    assert state(life) == SUCCEEDED


def test_a_job_whose_worker_keeps_dying_fails_after_max_runs(life: Lifecycle, fake: Any) -> None:
    queued(life)
    for lost in range(4):  # max_runs=3: three runs die with their worker, the fourth delivery fails the job
        lease = life.lease("j1", DEST)
        assert lease.acquire()
        start = life.start("j1", {}, DEST, "w", lease)
        if lost < 3:
            assert start.run and start.lost == lost
        else:
            assert not start.run and (start.state, start.lost) == (FAILED, 3)
        fake.delete(*lease.keys)  # the worker died: its lease runs out
    job = life.registry.get("j1")
    assert job is not None and job.state == FAILED and job.error is not None
    assert job.error["type"] == "WorkerLost" and "lost 3 times" in job.error["message"]


def test_settle_moves_only_what_no_run_holds(life: Lifecycle) -> None:
    queued(life)
    error = json.dumps(error_record(SourceMissing(["s3://b/x"])))
    assert life.settle("j1", FAILED, {"error": error}) == QUEUED
    assert life.settle("j1", RETRIED, {"retried_by": "j2"}, expect=frozenset({FAILED, CANCELLED})) == FAILED
    assert life.settle("j1", RETRIED, {}, expect=frozenset({FAILED, CANCELLED})) is None


def test_the_lease_client_times_out_inside_the_ttl() -> None:
    client = lease_client("redis://127.0.0.1:1/0", ttl=4)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.0 and kwargs["socket_connect_timeout"] == 1.0
    assert lease_client("redis://127.0.0.1:1/0", ttl=600).connection_pool.connection_kwargs["socket_timeout"] == 5.0


class Recorder:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def __call__(self) -> None:
        self.cancelled.set()


def heartbeat(life: Lifecycle, lease: Lease, shutting_down: bool = False) -> Heartbeat:
    return Heartbeat(life, lease, "j1", lambda progress: None, lambda: shutting_down)


def test_the_heartbeat_stops_a_cancelled_run_wherever_it_is(life: Lifecycle) -> None:
    queued(life)
    lease = begin(life)
    beat = heartbeat(life, lease)
    cancel = Recorder()
    beat.bind(cancel)
    beat.start()
    try:
        life.cancel("j1")
        assert cancel.cancelled.wait(10)
        assert beat.stop_reason == CANCEL
        with pytest.raises(JobCancelled):
            beat.fence({})
    finally:
        beat.stop()


def test_the_heartbeat_stops_a_run_that_lost_its_lease(life: Lifecycle, fake: Any) -> None:
    queued(life)
    lease = Lease(fake, ["t:lock:job:j1"], ttl=0.3)
    assert lease.acquire() and life.start("j1", {}, DEST, "w", lease).run
    beat = heartbeat(life, lease)
    cancel = Recorder()
    beat.bind(cancel)
    fake.set("t:lock:job:j1", "another-run")
    beat.start()
    try:
        assert cancel.cancelled.wait(10)
        assert beat.stop_reason == LEASE
    finally:
        beat.stop()


def test_nothing_stops_a_run_past_the_fence(life: Lifecycle) -> None:
    queued(life)
    lease = begin(life)
    beat = heartbeat(life, lease, shutting_down=True)
    cancel = Recorder()
    beat.bind(cancel)
    beat.fence({"entries": 1})
    beat.start()
    try:
        life.cancel("j1")
        beat.stop_run(CANCEL)
        assert not cancel.cancelled.is_set() and beat.stop_reason is None
    finally:
        beat.stop()


def test_the_lease_is_given_up_with_the_outcome(life: Lifecycle, fake: Any) -> None:
    """A job sent to the same destination the moment this one is seen succeeded must find it free (it waited
    LOCK_TTL/2 when the lease outlived the record)."""
    queued(life)
    lease = begin(life)
    assert life.finish("j1", lease, SUCCEEDED, {"result": "{}"})
    assert not any(fake.exists(key) for key in lease.keys)
    assert life.lease("j2", DEST).acquire()
