"""The job lifecycle, in one place: the states, the transitions allowed between them, and the lease a run holds.

::

    (new) ──> queued ──────────────> running ──> succeeded
                │                    │ ^  │ │
                │      waiting <─────┤ │  │ └──> failed ─────> retried
                │      retrying <────┘ │  └────> cancelled ──> retried
                │      queued <────────┘ (a worker shutting down hands it back)
                └──> cancelled / failed

Every transition is one compare-and-set in Redis (a WATCH transaction): it is made only if the job is still in
a state the table allows, and, for a run's own transitions, only while that run is the job's current run
(``run`` on the record, the token of its lease). So nothing overwrites a terminal state, and a stale run (one
whose lease expired and was taken over) can never write over the run that holds the lease.

A run publishes its archive at most once per job: right before the commit it passes the *fence*
(``Lifecycle.fence``), a compare-and-set that checks its lease, the job's state and the cancel flag at once and
marks the job ``publishing``. After the fence nothing can cancel or fail the job.

No Lua: every step is a plain command or a WATCH transaction, so the demo's fakeredis serves it as is.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from .errors import JobCancelled, LeaseLost

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)

QUEUED, WAITING, RUNNING, RETRYING = "queued", "waiting", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED, RETRIED = "succeeded", "failed", "cancelled", "retried"
STATES = (QUEUED, WAITING, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED, RETRIED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, RETRIED})
ACTIVE = frozenset(STATES) - TERMINAL

# The transitions allowed, from each state (None: no record yet) to the next.
ALLOWED: dict[str | None, frozenset[str]] = {
    # A job sent by other means than our client (``celery call``) gets its record when it starts.
    None: frozenset({QUEUED, RUNNING, FAILED, CANCELLED}),
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    WAITING: frozenset({RUNNING, CANCELLED, FAILED}),
    RETRYING: frozenset({RUNNING, CANCELLED, FAILED}),
    # running -> running: a new run takes over from one whose worker was lost.
    RUNNING: frozenset({RUNNING, SUCCEEDED, FAILED, CANCELLED, RETRYING, WAITING, QUEUED}),
    FAILED: frozenset({RETRIED}),
    CANCELLED: frozenset({RETRIED}),
    SUCCEEDED: frozenset(),
    RETRIED: frozenset(),
}


def allowed(current: str | None, to: str) -> bool:
    return to in ALLOWED.get(current, frozenset())


def write_state(
    registry: Registry, pipe: Any, job_id: str, state: str, now: float, fields: dict[str, Any], new: bool = False
) -> None:
    """Queue the commands that put ``job_id`` in ``state``: its record, and the per-state indexes (a ``new``
    job is in none yet). An active job's record never expires; a finished one expires after the retention and
    joins the ``finished`` index, the only one trimming reads."""
    key = registry.key("job", job_id)
    pipe.hset(key, mapping={**fields, "state": state, "updated": now})
    if state in TERMINAL:
        pipe.expire(key, registry.settings.job_retention)
        pipe.zadd(registry.key("finished"), {job_id: now})
    elif not new:
        pipe.persist(key)
    for other in () if new else STATES:
        if other != state:
            pipe.zrem(registry.key("state", other), job_id)
    pipe.zadd(registry.key("state", state), {job_id: now})
    registry.count_transition(pipe, state, fields)  # the counters /metrics reports (issue 9)


# --- the lease ---


class Lease:
    """A lease on several keys at once (SET NX PX), renewed by its holder and released only by it.

    The Redis client it uses must time out well inside the TTL (``lease_client``), so a renewal that hangs is
    known to have failed while the lease may still be held."""

    def __init__(self, client: redis.Redis, keys: Sequence[str], ttl: float, token: str | None = None) -> None:
        self.client, self.keys = client, list(keys)
        self.ttl = ttl
        self.ttl_ms = int(ttl * 1000)
        self.token = token or uuid.uuid4().hex

    def acquire(self) -> bool:
        held: list[str] = []
        for key in self.keys:
            if not self.client.set(key, self.token, nx=True, px=self.ttl_ms):
                self._release(held)
                return False
            held.append(key)
        return True

    def renew(self) -> bool:
        """Extend the lease; False when it was lost (taken by another holder). A key that expired (Redis
        restarted without persistence, say) and that nobody took is taken back."""
        ok = True
        for key in self.keys:
            ok &= self._if_mine(key, lambda p, k=key: p.pexpire(k, self.ttl_ms), reclaim=True)
        return ok

    def release(self) -> None:
        self._release(self.keys)

    def held(self) -> bool:
        return all(self.client.get(key) == self.token for key in self.keys)

    def _release(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._if_mine(key, lambda p, k=key: p.delete(k))

    def _if_mine(self, key: str, action: Any, reclaim: bool = False) -> bool:
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(key)
                holder = pipe.get(key)
                if holder is None and reclaim:
                    return bool(self.client.set(key, self.token, nx=True, px=self.ttl_ms))
                if holder != self.token:
                    return False
                pipe.multi()
                action(pipe)
                pipe.execute()
                return True
            except redis.WatchError:
                return False


_lease_clients: dict[tuple[int, str, float], redis.Redis] = {}
_lease_clients_lock = threading.Lock()


def lease_client(url: str, ttl: float) -> redis.Redis:
    """A Redis client for the lease path: every call times out within a quarter of the TTL (at most 5 s), so
    a heartbeat never blocks past the lease it is renewing. One pool per URL per process."""
    import os

    timeout = min(5.0, max(0.2, ttl / 4))
    key = (os.getpid(), url, timeout)
    with _lease_clients_lock:
        client = _lease_clients.get(key)
        if client is None:
            client = _lease_clients[key] = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        return client


# --- transitions ---


@dataclass(frozen=True)
class Start:
    """What ``Lifecycle.start`` decided for a delivery: ``run`` it, or not (``state`` says why), with the
    recorded result when the job already succeeded, and how many earlier runs were lost."""

    run: bool
    state: str | None
    result: dict[str, Any] | None = None
    lost: int = 0


class Lifecycle:
    """The job state machine over the registry's records. Cheap to construct."""

    def __init__(self, registry: Registry, client: redis.Redis | None = None) -> None:
        self.registry = registry
        settings = registry.settings
        self.redis: Any = client if client is not None else lease_client(settings.redis_url, settings.lock_ttl)

    def key(self, *parts: str) -> str:
        return self.registry.key(*parts)

    def lease(self, job_id: str, destination: str) -> Lease:
        """The lease a run holds: on the job (no second delivery runs it at once) and on its destination (no
        other job writes the same object at once)."""
        keys = [self.key("lock", "job", job_id), self.key("lock", "dest", destination)]
        return Lease(self.redis, keys, self.registry.settings.lock_ttl)

    def _cas(self, job_id: str, decide: Callable[[dict[str, str], Any], Any], *watch: str) -> Any:
        """Read the job's record under WATCH, let ``decide(record, pipe)`` queue writes (after
        ``pipe.multi()``) and return a value; retried when another client wrote in between."""
        key = self.key("job", job_id)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key, *watch)
                    value = decide(pipe.hgetall(key), pipe)
                    pipe.execute()
                    return value
                except redis.WatchError:
                    continue

    def start(self, job_id: str, spec: dict[str, Any], destination: str, worker: str, lease: Lease) -> Start:
        """Make the run holding ``lease`` the job's current run, if the job may run. A job found ``running``
        under a lease nobody holds any more lost its worker: that counts towards ``max_runs``."""
        now = time.time()
        settings = self.registry.settings
        cancel_key = self.key("cancel", job_id)

        def decide(record: dict[str, str], pipe: Any) -> Start:
            state = record.get("state")
            if state == SUCCEEDED:
                return Start(False, state, json.loads(record["result"]) if record.get("result") else None)
            if pipe.exists(cancel_key) and allowed(state, CANCELLED):
                pipe.multi()
                error = json.dumps(_error(JobCancelled(job_id)))
                write_state(self.registry, pipe, job_id, CANCELLED, now, {"error": error, "finished": now})
                return Start(False, CANCELLED)
            if not allowed(state, RUNNING):
                return Start(False, state)
            lost = int(record.get("lost", 0)) + (1 if state == RUNNING else 0)
            pipe.multi()
            key = self.key("job", job_id)
            if lost >= settings.max_runs:
                from .errors import WorkerLost

                error = json.dumps(_error(WorkerLost(job_id, lost)))
                write_state(self.registry, pipe, job_id, FAILED, now, {"error": error, "finished": now, "lost": lost})
                return Start(False, FAILED, lost=lost)
            pipe.hsetnx(key, "spec", json.dumps(spec))
            pipe.hsetnx(key, "created", now)
            pipe.hsetnx(key, "attempt", 1)
            pipe.zadd(self.key("jobs"), {job_id: now}, nx=True)
            pipe.hincrby(key, "runs", 1)
            pipe.hdel(key, "error", "upload_id")
            fields = {
                "id": job_id,
                "destination": destination,
                "started": now,
                "worker": worker,
                "run": lease.token,
                "lost": lost,
            }
            write_state(self.registry, pipe, job_id, RUNNING, now, fields)
            from .registry import sweep_container

            pipe.sadd(self.key("buckets"), sweep_container(destination))
            return Start(True, RUNNING, lost=lost)

        result: Start = self._cas(job_id, decide, cancel_key)
        return result

    def fence(self, job_id: str, lease: Lease, pending: dict[str, Any], sealed: dict[str, Any] | None = None) -> None:
        """The last check before the archive is published: this run still holds its lease, the job is still
        its and running, and nobody asked to cancel it. Marks the job ``publishing`` with the result so far
        (``pending``: what a later run reports if this one dies between publishing and recording) and the
        sealed upload, if any (``sealed``: what a later run completes instead of making the archive again);
        raises ``LeaseLost`` or ``JobCancelled`` otherwise, and then nothing may be published."""
        cancel_key = self.key("cancel", job_id)

        def decide(record: dict[str, str], pipe: Any) -> None:
            if not all(pipe.get(k) == lease.token for k in lease.keys):
                raise LeaseLost(job_id)
            if record.get("state") != RUNNING or record.get("run") != lease.token:
                raise LeaseLost(job_id)
            if pipe.exists(cancel_key):
                raise JobCancelled(job_id)
            pipe.multi()
            mark = json.dumps({"run": lease.token, "result": pending, **({"sealed": sealed} if sealed else {})})
            pipe.hset(self.key("job", job_id), "publishing", mark)

        self._cas(job_id, decide, cancel_key, *lease.keys)

    def finish(
        self, job_id: str, lease: Lease, state: str, fields: dict[str, Any], extra: Callable[[Any], None] | None = None
    ) -> bool:
        """Move the job from this run's ``running`` to ``state`` (with ``fields`` on the record and ``extra``
        writes in the same transaction), and give up the lease in that same transaction: a job sent to the
        same destination the moment this one is seen finished must not find it still held. False, and nothing
        written, when the job is no longer this run's."""
        now = time.time()

        def decide(record: dict[str, str], pipe: Any) -> bool:
            if record and (record.get("run") != lease.token or not allowed(record.get("state"), state)):
                return False
            held = [key for key in lease.keys if pipe.get(key) == lease.token]
            pipe.multi()
            if held:
                pipe.delete(*held)
            done = {"finished": now} if state in TERMINAL else {}
            write_state(self.registry, pipe, job_id, state, now, {**fields, **done})
            if state == SUCCEEDED:
                pipe.hdel(self.key("job", job_id), "error")
            if state != RUNNING:
                pipe.hdel(self.key("job", job_id), "run")
            if extra is not None:
                extra(pipe)
            return True

        result: bool = self._cas(job_id, decide, *lease.keys)
        return result

    def settle(
        self, job_id: str, state: str, fields: dict[str, Any], expect: frozenset[str | None] = ACTIVE | {None}
    ) -> str | None:
        """Move a job that no run holds (queued, waiting, retrying) to ``state``. Returns the state it was in
        when that was allowed, else None and nothing written."""
        now = time.time()

        def decide(record: dict[str, str], pipe: Any) -> str | None:
            current = record.get("state")
            if current not in expect or not allowed(current, state):
                return None
            pipe.multi()
            done = {"finished": now} if state in TERMINAL else {}
            write_state(self.registry, pipe, job_id, state, now, {**fields, **done})
            return current

        result: str | None = self._cas(job_id, decide)
        return result

    def cancel(self, job_id: str) -> str | None:
        """Cancel atomically: a job not running is cancelled at once (``cancelled``); a running one is flagged
        and stops within a heartbeat (``cancelling``), unless it already passed the fence, in which case it
        publishes and succeeds. A finished job is left as it is (its state is returned). None: no such job."""
        now = time.time()
        cancel_key = self.key("cancel", job_id)
        retention = self.registry.settings.job_retention

        def decide(record: dict[str, str], pipe: Any) -> str | None:
            state = record.get("state")
            if state is None:
                return None
            if state in TERMINAL:
                return state
            pipe.multi()
            pipe.set(cancel_key, "1", ex=retention)
            if state == RUNNING:
                return "cancelling"
            error = json.dumps(_error(JobCancelled(job_id)))
            write_state(self.registry, pipe, job_id, CANCELLED, now, {"error": error, "finished": now})
            return CANCELLED

        result: str | None = self._cas(job_id, decide)
        return result

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key("cancel", job_id)))


def _error(exc: BaseException) -> dict[str, Any]:
    from .registry import error_record

    return error_record(exc)


# --- a run in progress: heartbeat, stop, fence ---

CANCEL, LEASE, SHUTDOWN = "cancel", "lease", "shutdown"  # why a run was stopped
MIN_HEARTBEAT = 0.05  # seconds: the heartbeat never spins faster than this, whatever progress_interval says


class Heartbeat(threading.Thread):
    """While a run works: renew its lease, publish its latest progress, and stop it - wherever it is, by
    cancelling it through ``bind`` - when the job is cancelled, the lease is lost (or cannot be renewed for
    most of its TTL), or the worker shuts down. Once the run has passed the fence nothing stops it."""

    def __init__(
        self,
        life: Lifecycle,
        lease: Lease,
        job_id: str,
        publish: Callable[[dict[str, Any]], None],
        shutting_down: Callable[[], bool],
    ) -> None:
        super().__init__(name=f"bucketzip-heartbeat-{job_id}", daemon=True)
        settings = life.registry.settings
        self.life, self.lease, self.job_id = life, lease, job_id
        self.publish, self.shutting_down = publish, shutting_down
        self.interval = max(settings.progress_interval, MIN_HEARTBEAT)
        self.renew_every = lease.ttl / 3
        self.latest: dict[str, Any] | None = None
        self.stop_reason: str | None = None
        self.publishing = False
        self._cancel: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def progress(self, p: Any) -> None:
        """The engine's progress callback (on its IO thread): keep the latest numbers, nothing more."""
        self.latest = p.to_dict()

    def bind(self, cancel: Callable[[], None]) -> None:
        with self._lock:
            self._cancel = cancel
            if self.stop_reason is not None:
                cancel()

    def stop_run(self, reason: str) -> None:
        with self._lock:
            if self.publishing or self.stop_reason is not None:
                return
            self.stop_reason = reason
            log.warning("job %s: stopping this run (%s)", self.job_id, reason)
            if self._cancel is not None:
                self._cancel()

    def fence(self, pending: dict[str, Any], sealed: dict[str, Any] | None = None) -> None:
        """The engine's last call before it commits (on a worker thread): raises to stop, else from here on
        the run cannot be stopped."""
        with self._lock:
            if self.stop_reason == CANCEL:
                raise JobCancelled(self.job_id)
            if self.stop_reason is not None:
                raise LeaseLost(self.job_id)
            self.life.fence(self.job_id, self.lease, pending, sealed)
            self.publishing = True

    def run(self) -> None:
        published: dict[str, Any] | None = None
        renewed = held = time.monotonic()
        while not self._halt.wait(self.interval):
            now = time.monotonic()
            if now - renewed >= self.renew_every:
                renewed = now
                try:
                    if self.lease.renew():
                        held = now
                    else:
                        self.stop_run(LEASE)  # another run holds it now
                except Exception:
                    log.warning("job %s: could not renew the lease", self.job_id, exc_info=True)
            if now - held > self.lease.ttl * 0.8:
                self.stop_run(LEASE)  # unrenewed this long, the lease may expire before we know it
            try:
                if self.shutting_down():
                    self.stop_run(SHUTDOWN)
                elif self.life.cancel_requested(self.job_id):
                    self.stop_run(CANCEL)
                latest = self.latest
                if latest is not None and latest is not published and not self._halt.is_set():
                    self.publish(latest)
                    published = latest
            except Exception:  # a Redis blip must not kill the heartbeat; the next beat tries again
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._halt.set()
        self.join()
