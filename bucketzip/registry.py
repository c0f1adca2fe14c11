"""Jobs and archives recorded in Redis: what ran, what failed, what was made, and who holds which lock.

Keys (all under ``<key_prefix>:``)::

    job:<id>            hash: one job (spec, state, attempt, runs, timestamps, result or error, links)
    jobs                zset: every recorded job by creation time (bounds the retention)
    state:<state>       zset: the jobs in that state, by the time they entered it (newest first on read)
    archives            zset: the archive catalog, one JSON record per archive made, by time
    uploads             hash: multipart upload id -> owning job (the sweeper spares running jobs' uploads)
    buckets             set: destination buckets seen (what the sweeper looks at by default)
    cancel:<id>         flag: cancellation requested
    lock:job:<id>       a running job's lock, and lock:dest:<url> for its destination

A job hash expires ``job_retention`` seconds after its last update and at most ``max_jobs_recorded`` are kept;
the catalog is never trimmed, so it is as durable as the Redis behind it (run it with AOF).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from .config import Settings

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED, RETRIED = "succeeded", "failed", "cancelled", "retried"
STATES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED, RETRIED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, RETRIED})
_JSON_FIELDS = ("spec", "result", "error")


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
    progress: dict[str, Any] | None = None  # filled in from the result backend while it runs

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Job:
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if name in _JSON_FIELDS:
                values[name] = json.loads(raw)
            elif name in ("attempt", "runs"):
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


class Lock:
    """A lease on several keys at once (SET NX PX), renewed by its holder and released only by it.

    No Lua: every step is a plain command or a WATCH transaction, so fakeredis serves it without lupa."""

    def __init__(self, client: redis.Redis, keys: Sequence[str], ttl: float) -> None:
        self.client, self.keys = client, list(keys)
        self.ttl_ms = int(ttl * 1000)
        self.token = uuid.uuid4().hex

    def acquire(self) -> bool:
        held: list[str] = []
        for key in self.keys:
            if not self.client.set(key, self.token, nx=True, px=self.ttl_ms):
                self._release(held)
                return False
            held.append(key)
        return True

    def renew(self) -> bool:
        """Extend the lease; False when it was lost (expired and taken by another holder)."""
        ok = True
        for key in self.keys:
            ok &= self._if_mine(key, lambda p, k=key: p.pexpire(k, self.ttl_ms))
        return ok

    def release(self) -> None:
        self._release(self.keys)

    def _release(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._if_mine(key, lambda p, k=key: p.delete(k))

    def _if_mine(self, key: str, action: Any) -> bool:
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) != self.token:
                    return False
                pipe.multi()
                action(pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                return False


_clients: dict[tuple[int, str], redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """One connection pool per URL per process (a pool made before a fork is not reused after it)."""
    key = (os.getpid(), url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
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

    def archives(self, limit: int = 100) -> list[dict[str, Any]]:
        """The archive catalog, newest first."""
        return [json.loads(r) for r in self.redis.zrevrange(self.key("archives"), 0, limit - 1)]

    def buckets(self) -> set[str]:
        return set(self.redis.smembers(self.key("buckets")))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key("cancel", job_id)))

    def is_running(self, job_id: str) -> bool:
        """True while some worker holds the job's lock."""
        return bool(self.redis.exists(self.key("lock", "job", job_id)))

    def upload_owner(self, upload_id: str) -> str | None:
        raw = self.redis.hget(self.key("uploads"), upload_id)
        return json.loads(raw)["job_id"] if raw else None

    # --- writing: the producer ---

    def claim(self, ids: Sequence[str]) -> list[bool]:
        """Reserve ids for new jobs in one round trip: True where the id was free."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hsetnx(self.key("job", job_id), "id", job_id)
            return [bool(r) for r in pipe.execute()]

    def queued(self, jobs: Sequence[tuple[str, dict[str, Any], str]], retry_of: Job | None = None) -> None:
        """Record claimed jobs ``(id, spec dict, destination URL)`` as queued, in one round trip."""
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, spec, destination in jobs:
                fields: dict[str, Any] = {
                    "id": job_id,
                    "state": QUEUED,
                    "spec": json.dumps(spec),
                    "destination": destination,
                    "attempt": 1,
                    "runs": 0,
                    "created": now,
                    "updated": now,
                }
                if retry_of is not None:
                    fields.update(attempt=retry_of.attempt + 1, retry_of=retry_of.id)
                self._set_state(pipe, job_id, QUEUED, now, fields, new=True)
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

    def mark_retried(self, job: Job, new_id: str) -> None:
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            self._set_state(pipe, job.id, RETRIED, now, {"retried_by": new_id})
            pipe.execute()

    def request_cancel(self, job_id: str) -> None:
        """Flag the job for cancellation; its worker notices within a heartbeat, a later one at start."""
        self.redis.set(self.key("cancel", job_id), "1", ex=self.settings.job_retention)

    # --- writing: the worker ---

    def started(self, job_id: str, spec: dict[str, Any], destination: str, worker: str) -> None:
        now = time.time()
        key = self.key("job", job_id)
        with self.redis.pipeline(transaction=False) as pipe:
            # A job enqueued by something other than our client (``celery call``) gets a record here.
            pipe.hsetnx(key, "spec", json.dumps(spec))
            pipe.hsetnx(key, "created", now)
            pipe.hsetnx(key, "attempt", 1)
            pipe.zadd(self.key("jobs"), {job_id: now}, nx=True)
            pipe.hincrby(key, "runs", 1)
            pipe.hdel(key, "error", "upload_id")
            fields = {"id": job_id, "destination": destination, "started": now, "worker": worker}
            self._set_state(pipe, job_id, RUNNING, now, fields)
            pipe.sadd(self.key("buckets"), _bucket(destination))
            pipe.execute()

    def upload_started(self, job_id: str, destination: str, upload_id: str) -> None:
        record = json.dumps({"job_id": job_id, "destination": destination, "created": time.time()})
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.key("uploads"), upload_id, record)
            pipe.hset(self.key("job", job_id), "upload_id", upload_id)
            pipe.execute()

    def forget_upload(self, upload_id: str) -> None:
        self.redis.hdel(self.key("uploads"), upload_id)

    def succeeded(self, job_id: str, result: dict[str, Any]) -> None:
        """Record the result and add the archive to the catalog, atomically."""
        now = time.time()
        entry = {
            "job_id": job_id,
            "destination": result["destination"],
            "size": result["size"],
            "etag": result.get("etag"),
            "version_id": result.get("version_id"),
            "entries": result["entries"],
            "storage_class": result.get("storage_class"),
            "created": now,
        }
        with self.redis.pipeline(transaction=True) as pipe:
            upload_id = self.redis.hget(self.key("job", job_id), "upload_id")
            fields = {"result": json.dumps(result), "finished": now}
            self._set_state(pipe, job_id, SUCCEEDED, now, fields)
            pipe.hdel(self.key("job", job_id), "error")
            pipe.zadd(self.key("archives"), {json.dumps(entry, sort_keys=True): now})
            if upload_id:
                pipe.hdel(self.key("uploads"), upload_id)
            pipe.execute()

    def failed(self, job_id: str, exc: BaseException, state: str = FAILED) -> None:
        """Record an error: ``failed``, ``cancelled``, or ``retrying`` (an automatic retry is scheduled)."""
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            fields: dict[str, Any] = {"error": json.dumps(error_record(exc))}
            if state != RETRYING:
                fields["finished"] = now
            self._set_state(pipe, job_id, state, now, fields)
            pipe.execute()

    def lock(self, job_id: str, destination: str) -> Lock:
        """The lock a run holds: on the job (no second delivery runs it at once) and on its destination (no
        other job writes the same object at once)."""
        keys = [self.key("lock", "job", job_id), self.key("lock", "dest", destination)]
        return Lock(self.redis, keys, self.settings.lock_ttl)

    # --- retention ---

    def trim(self) -> int:
        """Drop the records past the retention (by age and by count); the catalog is kept. Returns how many."""
        cutoff = time.time() - self.settings.job_retention
        old = self.redis.zrangebyscore(self.key("jobs"), "-inf", cutoff)
        excess = self.redis.zcard(self.key("jobs")) - self.settings.max_jobs_recorded
        extra = self.redis.zrange(self.key("jobs"), 0, excess - 1) if excess > 0 else []
        doomed = set(old) | set(extra)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in doomed:
                self._forget(pipe, job_id)
            pipe.execute()
        return len(doomed)

    # --- helpers ---

    def _set_state(
        self, pipe: Any, job_id: str, state: str, now: float, fields: dict[str, Any], new: bool = False
    ) -> None:
        key = self.key("job", job_id)
        pipe.hset(key, mapping={**fields, "state": state, "updated": now})
        pipe.expire(key, self.settings.job_retention)
        for other in () if new else STATES:  # a new job is in no state's list yet
            if other != state:
                pipe.zrem(self.key("state", other), job_id)
        pipe.zadd(self.key("state", state), {job_id: now})

    def _forget(self, pipe: Any, job_id: str) -> None:
        pipe.delete(self.key("job", job_id))
        pipe.zrem(self.key("jobs"), job_id)
        for state in STATES:
            pipe.zrem(self.key("state", state), job_id)


def _bucket(url: str) -> str:
    return url.removeprefix("s3://").split("/", 1)[0]
