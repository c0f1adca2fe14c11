"""The registry's paged reads of jobs and its recorded counters (issue 9), on fakeredis."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from bucketzip.config import Settings
from bucketzip.errors import SourceMissing
from bucketzip.lifecycle import Lifecycle
from bucketzip.registry import (
    CANCELLED,
    FAILED,
    RETRYING,
    STAT_SWEPT,
    SUCCEEDED,
    Registry,
    decode_cursor,
    encode_cursor,
    error_record,
)


@pytest.fixture
def registry() -> Registry:
    return Registry(Settings(key_prefix="t"), fakeredis.FakeRedis(decode_responses=True))


def walk(registry: Registry, limit: int, state: str | None = None) -> tuple[list[str], int]:
    ids: list[str] = []
    cursor, pages = None, 0
    while True:
        jobs, cursor = registry.page(state, cursor, limit)
        assert len(jobs) <= limit
        ids.extend(j.id for j in jobs)
        pages += 1
        if cursor is None:
            return ids, pages


def test_pages_cover_every_job_once_even_when_scores_tie(registry: Registry) -> None:
    # 25 jobs recorded in one round trip share one timestamp; then 4 more, one by one
    registry.queued([(f"b{i:02d}", {}, "s3://b/x.zip") for i in range(25)])
    for i in range(4):
        registry.queued([(f"s{i}", {}, "s3://b/x.zip")])
    everything = [j.id for j in registry.jobs(limit=1000)]
    for limit in (1, 3, 7, 25, 29, 100):
        ids, pages = walk(registry, limit)
        assert ids == everything, limit
        assert pages == -(-29 // limit)  # ceil: a full last page knows it is the last
    assert everything[:4] == ["s3", "s2", "s1", "s0"]
    assert walk(registry, 5, "failed") == ([], 1)


def test_a_page_is_stable_while_jobs_are_added_and_leave(registry: Registry) -> None:
    registry.queued([(f"j{i:02d}", {}, "s3://b/x.zip") for i in range(10)])
    first, cursor = registry.page("queued", None, 4)
    registry.queued([("newer", {}, "s3://b/x.zip")])  # newer than every page: not in the older ones
    Lifecycle(registry, registry.redis).settle(first[0].id, FAILED, {})  # one already shown leaves the state
    rest, cursor2 = registry.page("queued", cursor, 100)
    assert cursor2 is None
    assert [j.id for j in first] + [j.id for j in rest] == [f"j{i:02d}" for i in range(9, -1, -1)]


def test_cursors_are_opaque_and_checked() -> None:
    position = (1732272000.123456789, "job-1")
    cursor = encode_cursor(position)
    assert cursor is not None and decode_cursor(cursor) == position and "=" not in cursor
    for bad in ("garbage!", "bm9wZQ", encode_cursor((1.0, "x"))[:-3] + "###", "W10"):
        with pytest.raises(ValueError, match="not a cursor"):
            decode_cursor(bad)


def test_counters_are_recorded_with_the_transitions(registry: Registry) -> None:
    life = Lifecycle(registry, registry.redis)
    registry.queued([(i, {}, f"s3://b/{i}.zip") for i in "abcd"])

    def run(job_id: str) -> Any:
        lease = life.lease(job_id, f"s3://b/{job_id}.zip")
        assert lease.acquire() and life.start(job_id, {}, f"s3://b/{job_id}.zip", "w1", lease).run
        return lease

    error = {"error": json.dumps(error_record(SourceMissing(["s3://b/x"])))}
    result = {"destination": "s3://b/a.zip", "size": 700, "entries": 2, "input_bytes": 1000, "duration": 42.0}
    assert life.finish("a", run("a"), SUCCEEDED, {"result": json.dumps(result)})
    lease = run("b")
    assert life.finish("b", lease, RETRYING, error)
    lease.release()
    assert life.finish("b", run("b"), FAILED, error)  # a second run of b
    assert life.finish("c", run("c"), CANCELLED, error)
    assert life.cancel("d") == CANCELLED  # queued: cancelled at once, never started
    registry.count(STAT_SWEPT, 2)
    stats = registry.stats()
    assert stats["started"] == 4 and stats["bytes_in"] == 1000 and stats["bytes_out"] == 700
    assert stats["finished:succeeded"] == 1 and stats["finished:failed"] == 1
    assert stats["finished:cancelled"] == 2 and stats["finished:retrying"] == 1
    assert stats["duration:3"] == 1 and stats["duration:sum"] == 42.0  # 42 s: in the 60 s bucket
    assert stats[STAT_SWEPT] == 2
