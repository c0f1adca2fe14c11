"""Jobs and archives recorded in Redis: what ran, what failed, what was made, and who holds which lock.

Keys (all under ``<key_prefix>:``)::

    job:<id>            hash: one job (spec, state, attempt, runs, timestamps, result or error, links, run)
    jobs                zset: every recorded job by creation time
    state:<state>       zset: the jobs in that state, by the time they entered it (newest first on read)
    finished            zset: the finished jobs by the time they finished (what trimming reads)
    catalog:*           the archive catalog (``catalog.py``)
    uploads             hash: multipart upload id -> owning job (the sweeper spares running jobs' uploads)
    stats               hash: counters since the first run (runs started, jobs finished by outcome, bytes in
                        and out, a histogram of job durations, uploads swept), read by /metrics
    buckets             set: destination buckets seen (what the sweeper looks at by default)
    cancel:<id>         flag: cancellation requested
    lock:job:<id>       a running job's lock, and lock:dest:<url> for its destination

Only finished jobs are ever dropped: a finished job's record expires ``job_retention`` seconds after it ended,
and past ``max_jobs_recorded`` records the oldest finished ones go first. A queued, waiting, running or retrying
job is kept however many there are. The catalog is never trimmed, so it is as durable as the Redis behind it
(run it with AOF). The transitions of a job's state belong to ``lifecycle``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from .catalog import Catalog, record_from_result
from .config import Settings
from .lifecycle import (
    ACTIVE,
    CANCELLED,
    FAILED,
    QUEUED,
    RETRIED,
    RETRYING,
    RUNNING,
    STATES,
    SUCCEEDED,
    TERMINAL,
    WAITING,
    write_state,
)

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "FAILED",
    "QUEUED",
    "RETRIED",
    "RETRYING",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "TERMINAL",
    "WAITING",
    "Job",
    "Registry",
    "catalog_entry",
    "error_record",
    "redis_client",
]

_JSON_FIELDS = ("spec", "result", "error", "restore")

# Counters in the ``stats`` hash (what /metrics reports as Prometheus counters).
STAT_STARTED, STAT_BYTES_IN, STAT_BYTES_OUT, STAT_SWEPT = "started", "bytes_in", "bytes_out", "sweep_aborted"
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, math.inf)  # seconds, a job's run
COUNTED_OUTCOMES = frozenset({SUCCEEDED, FAILED, CANCELLED, RETRYING})  # "finished:<state>" counters


@dataclass
class Job:
    """One recorded job. ``attempt`` counts retries by a person (each is a new job, linked by ``retry_of``);
    ``runs`` counts executions of this one (automatic retries of transient errors, redeliveries)."""

    id: str
    state: str
    spec: dict[str, Any] = field(default_factory=dict)
    destination: str | None = None
    attempt: int = 1
    runs: int = 0
    lost: int = 0  # runs whose worker died under them
    created: float | None = None
    updated: float | None = None
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # {"type": ..., "message": ..., "args": [...]}
    retry_of: str | None = None
    retried_by: str | None = None
    worker: str | None = None
    upload_id: str | None = None
    run: str | None = None  # the lease token of the run that holds the job while it runs
    publishing: str | None = None  # set by the run that passed the fence, right before it publishes
    progress: dict[str, Any] | None = None  # filled in from the result backend while it runs
    restore: dict[str, Any] | None = None  # while waiting: {"restored": n, "total": m, "checked": time}

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Job:
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if name in _JSON_FIELDS:
                values[name] = json.loads(raw)
            elif name in ("attempt", "runs", "lost"):
                values[name] = int(raw)
            elif name in ("created", "updated", "started", "finished"):
                values[name] = float(raw)
            elif name in cls.__dataclass_fields__:
                values[name] = raw
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_record(exc: BaseException) -> dict[str, Any]:
    """How an exception is recorded: its type, the sentence a person reads, and its arguments."""
    args = [a if isinstance(a, str | int | float | bool | list | dict | type(None)) else repr(a) for a in exc.args]
    return {"type": type(exc).__name__, "message": str(exc), "args": args}


_clients: dict[tuple[int, str], redis.Redis] = {}
_clients_lock = threading.Lock()


CONNECT_TIMEOUT = 5.0  # seconds to reach Redis: a producer facing a dead Redis says so instead of hanging
COMMAND_TIMEOUT = 30.0  # seconds for one command or pipeline (a batch of 1,000 jobs takes milliseconds)


def redis_client(url: str) -> redis.Redis:
    """One connection pool per URL per process (a pool made before a fork is not reused after it). Every call
    times out; the lease path uses a client of its own with shorter timeouts (``lifecycle.lease_client``)."""
    key = (os.getpid(), url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(
                url,
                decode_responses=True,
                health_check_interval=30,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT,
            )
        return client


class Registry:
    """Jobs and archives recorded in Redis. Cheap to construct; share the client, not the registry."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        # redis-py's stubs do not know decode_responses=True gives str; typed loosely on purpose.
        self.redis: Any = client if client is not None else redis_client(settings.redis_url)
        self.prefix = settings.key_prefix + ":"

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # --- reading ---

    def get(self, job_id: str) -> Job | None:
        data = self.redis.hgetall(self.key("job", job_id))
        return Job.from_hash(data) if data and "state" in data else None

    def get_many(self, ids: Sequence[str]) -> list[Job]:
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.key("job", job_id))
            rows = pipe.execute()
        return [Job.from_hash(row) for row in rows if row and "state" in row]

    def jobs(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """Recorded jobs, newest first: all of them, or those in ``state``."""
        zset = self.key("state", state) if state else self.key("jobs")
        return self.get_many(self.redis.zrevrange(zset, 0, limit - 1))

    def counts(self) -> dict[str, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for state in STATES:
                pipe.zcard(self.key("state", state))
            return dict(zip(STATES, pipe.execute(), strict=True))

    def archives(self, limit: int = 100, **search: Any) -> list[dict[str, Any]]:
        """The archive catalog, newest first (``Catalog.search``'s filters as keywords)."""
        return Catalog(self.settings, self.redis).search(limit, **search)

    def page(
        self, state: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Job], str | None]:
        """One page of recorded jobs, newest first (those in ``state`` if given), and the cursor of the next
        page (None at the end). Costs O(log N + page) whatever the number of jobs. Raises ``ValueError`` for
        a cursor this registry did not make."""
        zset = self.key("state", state) if state else self.key("jobs")
        ids, following = self._walk(zset, decode_cursor(cursor) if cursor else None, limit)
        return self.get_many(ids), following

    def stats(self) -> dict[str, float]:
        """The recorded counters (see ``count_*``): name -> value."""
        return {name: float(value) for name, value in self.redis.hgetall(self.key("stats")).items()}

    def _walk(self, zset: str, after: tuple[float, str] | None, limit: int) -> tuple[list[str], str | None]:
        """Up to ``limit`` members of ``zset`` newest first, strictly after the position ``after`` = (score,
        member), and the cursor to go on from (None when the set is exhausted).

        Members with equal scores (a batch recorded in one round trip) come in descending member order, so
        a (score, member) position is exact. ZREVRANGEBYSCORE starts at the cursor's score: O(log N) to get
        there, plus the members that share that score and were already returned."""
        top: float | str = "+inf" if after is None else after[0]
        found: list[str] = []
        last: tuple[float, str] | None = None
        offset = 0
        while True:
            rows = self.redis.zrevrangebyscore(zset, top, "-inf", start=offset, num=limit + 1, withscores=True)
            for member, score in rows:
                if after is not None and score == after[0] and member >= after[1]:
                    continue  # at or before the cursor: returned by an earlier page
                if len(found) == limit:
                    return found, encode_cursor(last)
                found.append(member)
                last = (score, member)
            if len(rows) < limit + 1:
                return found, None
            offset += len(rows)

    def buckets(self) -> set[str]:
        return set(self.redis.smembers(self.key("buckets")))

    def is_running(self, job_id: str) -> bool:
        """True while some worker holds the job's lock."""
        return bool(self.redis.exists(self.key("lock", "job", job_id)))

    def upload_owner(self, upload_id: str) -> str | None:
        raw = self.redis.hget(self.key("uploads"), upload_id)
        return json.loads(raw)["job_id"] if raw else None

    # --- writing: the producer ---

    def claim(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any] | None]:
        """Reserve ids for new jobs ``(id, spec dict)`` in one round trip: None where the id was free (it now
        holds this spec), else the spec already recorded under it."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, spec in items:
                pipe.hsetnx(self.key("job", job_id), "spec", json.dumps(spec))
            free = pipe.execute()
            taken = [job_id for (job_id, _), ok in zip(items, free, strict=True) if not ok]
            for job_id in taken:
                pipe.hget(self.key("job", job_id), "spec")
            recorded = iter(pipe.execute())
        return [None if ok else json.loads(next(recorded) or "{}") for ok in free]

    def queued(self, jobs: Sequence[tuple[str, dict[str, Any], str]], retry_of: Job | None = None) -> None:
        """Record claimed jobs ``(id, spec dict, destination URL)`` as queued, in one round trip."""
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, spec, destination in jobs:
                fields: dict[str, Any] = {
                    "id": job_id,
                    "spec": json.dumps(spec),
                    "destination": destination,
                    "attempt": 1,
                    "runs": 0,
                    "created": now,
                }
                if retry_of is not None:
                    fields.update(attempt=retry_of.attempt + 1, retry_of=retry_of.id)
                write_state(self, pipe, job_id, QUEUED, now, fields, new=True)
                pipe.zadd(self.key("jobs"), {job_id: now})
            pipe.zcard(self.key("jobs"))
            recorded = pipe.execute()[-1]
        if recorded > self.settings.max_jobs_recorded:
            self.trim()

    def unclaim(self, ids: Sequence[str]) -> None:
        """Forget jobs whose message could not be published."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                self._forget(pipe, job_id)
            pipe.execute()

    def claim_retry(self, job_id: str, new_id: str) -> bool:
        """Reserve the right to retry ``job_id``: False if another retry of it got there first."""
        return bool(self.redis.hsetnx(self.key("job", job_id), "retried_by", new_id))

    # --- writing: the worker ---

    def upload_started(self, job_id: str, destination: str, upload_id: str) -> None:
        record = json.dumps({"job_id": job_id, "destination": destination, "created": time.time()})
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.key("uploads"), upload_id, record)
            pipe.hset(self.key("job", job_id), "upload_id", upload_id)
            pipe.execute()

    def forget_upload(self, upload_id: str) -> None:
        self.redis.hdel(self.key("uploads"), upload_id)

    def add_archive(self, pipe: Any, job_id: str, result: dict[str, Any], upload_id: str | None) -> None:
        """Queue the catalog record of a job's archive on ``pipe`` (the transaction recording its success)."""
        now = time.time()
        Catalog(self.settings, self.redis).add(pipe, record_from_result(job_id, result, now))
        if upload_id:
            pipe.hdel(self.key("uploads"), upload_id)

    # --- stats (issue 9, /metrics): counters bumped in the same round trip as the transition they count ---

    def count(self, name: str, amount: float = 1) -> None:
        """Add ``amount`` to a recorded counter (e.g. ``STAT_SWEPT``)."""
        self.redis.hincrbyfloat(self.key("stats"), name, amount)

    def count_transition(self, pipe: Any, state: str, fields: dict[str, Any]) -> None:
        """Queue on ``pipe`` the counters a transition into ``state`` bumps (``lifecycle.write_state`` calls
        this for every transition, in the same transaction): a run started, a job finished by outcome (with
        its bytes and duration when it succeeded), a transient failure retried."""
        stats = self.key("stats")
        if state == RUNNING:
            pipe.hincrby(stats, STAT_STARTED, 1)
        if state not in COUNTED_OUTCOMES:
            return
        pipe.hincrby(stats, f"finished:{state}", 1)
        raw = fields.get("result")
        result = json.loads(raw) if isinstance(raw, str) else raw
        if state == SUCCEEDED and isinstance(result, dict):
            pipe.hincrby(stats, STAT_BYTES_IN, int(result.get("input_bytes") or 0))
            pipe.hincrby(stats, STAT_BYTES_OUT, int(result.get("size") or 0))
            duration = float(result.get("duration") or 0.0)
            bucket = next(i for i, le in enumerate(DURATION_BUCKETS) if duration <= le)
            pipe.hincrby(stats, f"duration:{bucket}", 1)
            pipe.hincrbyfloat(stats, "duration:sum", duration)

    # --- retention ---

    def trim(self) -> int:
        """Drop finished jobs past the retention, and the oldest finished ones while more than
        ``max_jobs_recorded`` are recorded; never an active job, and never the catalog. Returns how many."""
        cutoff = time.time() - self.settings.job_retention
        old = self.redis.zrangebyscore(self.key("finished"), "-inf", cutoff)
        excess = self.redis.zcard(self.key("jobs")) - self.settings.max_jobs_recorded - len(old)
        extra = self.redis.zrange(self.key("finished"), len(old), len(old) + excess - 1) if excess > 0 else []
        doomed = set(old) | set(extra)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in doomed:
                self._forget(pipe, job_id)
            pipe.execute()
        return len(doomed)

    def _forget(self, pipe: Any, job_id: str) -> None:
        pipe.delete(self.key("job", job_id))
        pipe.zrem(self.key("jobs"), job_id)
        pipe.zrem(self.key("finished"), job_id)
        for state in STATES:
            pipe.zrem(self.key("state", state), job_id)


catalog_entry = record_from_result  # the catalog's record of a job's result (see catalog.py)


def sweep_container(destination: str) -> str:
    """What the sweeper records of a destination: an S3 bucket by its name, a vault as ``glacier://VAULT``."""
    scheme, _, rest = destination.partition("://")
    name = rest.split("/", 1)[0]
    return f"glacier://{name}" if scheme == "glacier" else name


def encode_cursor(position: tuple[float, str] | None) -> str | None:
    """An opaque cursor for a (score, member) position: URL-safe, round-trips the score exactly."""
    if position is None:
        return None
    raw = json.dumps([repr(position[0]), position[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position ``encode_cursor`` made; ``ValueError`` for anything else."""
    try:
        score, member = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        value = float(score)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a cursor this server returned ({exc.__class__.__name__})") from None
    if not isinstance(member, str) or math.isnan(value):
        raise ValueError("not a cursor this server returned")
    return value, member
