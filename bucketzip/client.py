"""The producer API: submit jobs, follow them, retry and cancel them, list jobs and archives.

::

    import bucketzip

    job = bucketzip.submit({"sources": ["s3://photos/2024/"], "destination": "s3://exports/2024.zip"})
    job.status().progress      # {"files_done": ..., "bytes_done": ..., "rate": ..., "eta": ...}
    result = job.wait(timeout=600)

A spec is validated here, before anything is queued (``InvalidJob`` names the field). The message is sent by
task name, so a producer loads Celery, kombu and redis but never s3fs or the ZIP writer. ``submit_many``
sends a whole batch over one broker connection and records it in Redis with one pipelined round trip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celery.exceptions import TimeoutError as CeleryTimeout

from .config import Settings
from .errors import InvalidJob, JobCancelled, JobConflict, JobStateError, JobTimedOut, UnknownJob
from .lifecycle import CANCELLED, FAILED, QUEUED, RETRIED, RETRYING, RUNNING, TERMINAL, Lifecycle
from .redact import redact
from .registry import Job, Registry, redis_client
from .spec import JobSpec
from .worker import REDIS_SCHEMES, TASK_NAME, BucketzipCelery, broker_url, make_app

log = logging.getLogger(__name__)

BATCH_SIZE = 1_000  # specs per round trip in submit_many: bounds the pipeline and the memory it holds
_CELERY_STATES = {"PENDING": QUEUED, "STARTED": RUNNING, "PROGRESS": RUNNING, "RETRY": RETRYING}


@dataclass(frozen=True)
class JobHandle:
    """A submitted job: its id, and shortcuts to the client calls about it."""

    id: str
    client: Client = field(repr=False, compare=False)

    def status(self) -> Job:
        return self.client.status(self.id)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        return self.client.wait(self.id, timeout)

    def cancel(self) -> str:
        return self.client.cancel(self.id)


@dataclass
class Batch:
    """What ``submit_many`` did: the jobs accepted (in order) and the invalid specs by position."""

    accepted: list[JobHandle] = field(default_factory=list)
    invalid: list[tuple[int, InvalidJob]] = field(default_factory=list)


class Client:
    """Talks to the broker, the result backend and the registry. Thread-safe; make one per process."""

    def __init__(self, settings: Settings | None = None, app: BucketzipCelery | None = None) -> None:
        self.settings = settings or (app.settings if app is not None else Settings.from_env())
        self.app = app or make_app(self.settings)
        self.registry = Registry(self.settings)

    # --- submitting ---

    def submit(self, spec: Mapping[str, Any] | JobSpec) -> JobHandle:
        """Validate ``spec`` and enqueue it. Raises ``InvalidJob`` (nothing queued) if the spec is wrong.
        A spec whose ``job_id`` is already recorded is not queued again: its handle is returned."""
        item = self._prepare(spec)
        return self._enqueue([item])[0]

    def submit_many(self, specs: Iterable[Mapping[str, Any] | JobSpec], batch_size: int = BATCH_SIZE) -> Batch:
        """Validate and enqueue many specs: one Redis round trip and one broker connection per batch of
        ``batch_size``. Invalid specs are reported by position (from 0) and not queued."""
        batch = Batch()
        for start, chunk in _chunks(specs, batch_size):
            items, positions = [], []
            for i, spec in enumerate(chunk, start):
                try:
                    items.append(self._prepare(spec))
                    positions.append(i)
                except InvalidJob as exc:
                    batch.invalid.append((i, exc))
            while True:
                try:
                    batch.accepted.extend(self._enqueue(items))
                    break
                except JobConflict as exc:  # report it by position, and enqueue the rest
                    at = next(n for n, item in enumerate(items) if item[0] == exc.job_id)
                    batch.invalid.append((positions.pop(at), exc))
                    del items[at]
        batch.invalid.sort(key=lambda pair: pair[0])
        return batch

    def _prepare(self, spec: Mapping[str, Any] | JobSpec) -> tuple[str, dict[str, Any], str]:
        """Validate a spec: (job id, its canonical dict, destination URL). Raises ``InvalidJob``."""
        parsed = spec if isinstance(spec, JobSpec) else JobSpec.from_dict(spec, self.settings)
        job_id = parsed.job_id or uuid.uuid4().hex
        return job_id, parsed.to_dict(), parsed.destination.url

    def _enqueue(self, items: list[tuple[str, dict[str, Any], str]], retry_of: Job | None = None) -> list[JobHandle]:
        """Record and publish ``items``; an item whose ``job_id`` is already recorded with the same spec is not
        queued again (its handle is returned), one recorded with another spec raises ``JobConflict``."""
        named = [(job_id, spec) for job_id, spec, _ in items if spec.get("job_id") == job_id]
        claims = self.registry.claim(named)
        taken = {job_id for (job_id, _), recorded in zip(named, claims, strict=True) if recorded is not None}
        for (job_id, spec), recorded in zip(named, claims, strict=True):
            if recorded is not None and _canonical(recorded) != _canonical(spec):
                # Release what this call claimed, so a conflict leaves nothing behind.
                self.registry.unclaim([i for (i, _), r in zip(named, claims, strict=True) if r is None])
                raise JobConflict(job_id)
        fresh, seen = [], set(taken)
        for item in items:
            if item[0] not in seen:
                fresh.append(item)
                seen.add(item[0])
        self.registry.queued(fresh, retry_of)
        try:
            self._publish(fresh)
        except BaseException:
            self.registry.unclaim([job_id for job_id, _, _ in fresh])
            raise
        return [JobHandle(job_id, self) for job_id, _, _ in items]

    def _publish(self, items: list[tuple[str, dict[str, Any], str]]) -> None:
        """Send the task messages over one connection, pipelined into one round trip on Redis (kombu's
        ``Producer.batch``, 5.7+). This is what ``send_task`` does, minus its per-message subscription to the
        result (a Redis SUBSCRIBE per job): ``wait`` subscribes when asked."""
        if not items:
            return
        amqp = self.app.amqp
        conf = self.app.conf
        options = amqp.router.route({}, TASK_NAME, (), {}, None)
        with self.app.producer_or_acquire() as producer, _batch(producer, len(items)):
            for job_id, spec, _ in items:
                message = amqp.create_task_message(
                    job_id,
                    TASK_NAME,
                    [spec],
                    {},
                    create_sent_event=conf.task_send_sent_event,
                    root_id=job_id,
                    argsrepr=repr([spec["destination"]]),
                )
                amqp.send_task_message(producer, TASK_NAME, message, **options)

    # --- following ---

    def status(self, job_id: str) -> Job:
        """The job as recorded, with its live progress while it runs. Raises ``UnknownJob``."""
        job = self.registry.get(job_id)
        meta = self.app.backend.get_task_meta(job_id)
        celery_state = meta.get("status", "PENDING")
        if job is None:
            if celery_state == "PENDING":
                raise UnknownJob(job_id)
            job = Job(id=job_id, state=_CELERY_STATES.get(celery_state, celery_state.lower()))
        if celery_state == "PROGRESS" and job.state not in TERMINAL:
            job.progress = meta.get("result")
        elif celery_state == "FAILURE" and job.state == RUNNING and not self.registry.is_running(job_id):
            # The run ended without recording it (a hard time limit killed the process): trust Celery.
            exc = meta.get("result")
            job.state = FAILED
            job.error = {"type": type(exc).__name__, "message": str(exc), "args": list(getattr(exc, "args", []))}
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends; return its result dict, or raise its error (rebuilt as the same
        bucketzip exception type), ``JobCancelled``, ``JobTimedOut`` (it ran past its time limit), or
        ``TimeoutError`` (``timeout`` passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = self.app.AsyncResult(job_id)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
            try:
                value: dict[str, Any] = result.get(
                    timeout=1.0 if left is None else min(1.0, left), disable_sync_subtasks=False
                )
                return value
            except CeleryTimeout:
                # A job cancelled while queued may never reach a worker to record it in the backend.
                job = self.registry.get(job_id)
                if job is not None and job.state == CANCELLED:
                    raise JobCancelled(job_id) from None
            except TaskRevokedError:
                raise JobCancelled(job_id) from None
            except (SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
                # Celery's own (billiard's) exceptions, rebuilt from the result backend: say it in our words.
                if isinstance(exc, SoftTimeLimitExceeded):
                    reason = (
                        "its soft time limit (BUCKETZIP_JOB_SOFT_TIME_LIMIT, by default just under "
                        "BUCKETZIP_JOB_TIME_LIMIT) was reached; it was stopped and its upload aborted"
                    )
                else:
                    reason = "its hard time limit (BUCKETZIP_JOB_TIME_LIMIT) was reached; its worker process was killed"
                raise JobTimedOut(job_id, reason) from None

    # --- acting ---

    def retry(self, job_id: str) -> JobHandle:
        """Enqueue a failed or cancelled job again, with its recorded spec, as a new job (a new attempt,
        linked both ways: ``retry_of`` and ``retried_by``). Raises ``UnknownJob`` or ``JobStateError``."""
        job = self.registry.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        if job.state not in (FAILED, CANCELLED):
            raise JobStateError(job_id, job.state, "only a failed or cancelled job can be retried")
        new_id = uuid.uuid4().hex
        if not self.registry.claim_retry(job_id, new_id):
            raise JobStateError(job_id, "retried", "it was already retried")
        parsed = JobSpec.from_dict(job.spec, self.settings)  # the rules may have changed since
        handle = self._enqueue([(new_id, parsed.to_dict(), parsed.destination.url)], retry_of=job)[0]
        Lifecycle(self.registry).settle(job_id, RETRIED, {"retried_by": new_id}, expect=frozenset({FAILED, CANCELLED}))
        return handle

    def retry_failed(self, limit: int = 10_000) -> list[JobHandle]:
        """Retry every job recorded as failed (newest first, at most ``limit``)."""
        handles = []
        for job in self.registry.jobs(FAILED, limit):
            try:
                handles.append(self.retry(job.id))
            except JobStateError:
                continue  # retried concurrently by someone else
        return handles

    def cancel(self, job_id: str) -> str:
        """Cancel a job: a queued one never runs; a running one stops and aborts its upload. Returns the
        state: ``cancelled``, ``cancelling`` (a worker will stop it shortly, unless it is already publishing,
        in which case it succeeds), or the state it had already ended in. Atomic: a job that has just
        succeeded is never marked cancelled."""
        state = Lifecycle(self.registry).cancel(job_id)
        if state is None:
            raise UnknownJob(job_id)
        if state != CANCELLED:
            # Finished already, or running ("cancelling"): a running job is stopped by its heartbeat through the
            # flag. Its message must not be revoked: a run that hands it back (a lost lease, a worker shutting
            # down) relies on its redelivery, which then records the cancel; a revoked one would be dropped and
            # the job left "running" for ever.
            return state
        try:
            # Drops the message if a worker holds it unstarted; the flag covers workers that start later.
            self.app.control.revoke(job_id)
        except Exception as exc:  # the transport may not broadcast (the embedded SQLite one)
            log.debug("revoke %s: %s", job_id, exc)
        return state

    # --- listing ---

    def jobs(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """Recorded jobs, newest first; only those in ``state`` (queued, running, retrying, waiting,
        succeeded, failed, cancelled, retried) if given."""
        return self.registry.jobs(state, limit)

    def archives(
        self,
        limit: int = 100,
        prefix: str | None = None,
        cursor: str | None = None,
        vault: str | None = None,
        job_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """The archive catalog, newest first (see ``bucketzip.catalog``): each record's ``id``, ``url``
        (``s3://bucket/key`` or ``glacier://VAULT/ARCHIVE_ID``), destination, size, etag or tree_hash,
        version_id, archive_id, entries, input_bytes, storage_class, description, job_id, created (Unix
        time) and sources_digest. Filters: destination URL ``prefix``, ``vault``, ``job_id``, ``since`` <=
        created < ``until``; ``cursor`` is the ``id`` of the last record of the previous page."""
        search = {"prefix": prefix, "cursor": cursor, "vault": vault, "job_id": job_id, "since": since, "until": until}
        return self.registry.archives(limit, **search)

    # --- pages, live progress and gauges, for the HTTP API and the dashboard (issue 9) ---

    def jobs_page(
        self, state: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Job], str | None]:
        """One page of recorded jobs, newest first, and the next page's cursor (None at the end): O(page),
        whatever the number of jobs. Raises ``ValueError`` for a cursor that was not returned by this."""
        return self.registry.page(state, cursor, limit)

    def counts(self) -> dict[str, int]:
        """How many recorded jobs are in each state."""
        return self.registry.counts()

    def stats(self) -> dict[str, float]:
        """The counters the workers record: runs started, jobs finished by outcome, bytes, durations."""
        return self.registry.stats()

    def progress(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The live progress of those of ``job_ids`` that are running, read in one round trip where the
        result backend is a key-value store (Redis)."""
        backend = self.app.backend
        if not job_ids:
            return {}
        if isinstance(backend, KeyValueStoreBackend):
            values = backend.mget([backend.get_key_for_task(job_id) for job_id in job_ids])
            metas = [backend.decode_result(v) if v else {} for v in values]
        else:
            metas = [backend.get_task_meta(job_id) for job_id in job_ids]
        return {
            job_id: meta["result"]
            for job_id, meta in zip(job_ids, metas, strict=True)
            if meta.get("status") == "PROGRESS" and isinstance(meta.get("result"), dict)
        }

    def attempts(self, job: Job, most: int = 20) -> list[Job]:
        """The chain of attempts ``job`` belongs to (``retry_of`` back, ``retried_by`` forward), first
        attempt first, at most ``most`` links each way."""
        chain, seen = [job], {job.id}
        for link, add in (("retry_of", lambda j: chain.insert(0, j)), ("retried_by", chain.append)):
            here = job
            for _ in range(most):
                target = getattr(here, link)
                found = self.registry.get(target) if target and target not in seen else None
                if found is None:
                    break
                add(found)
                seen.add(found.id)
                here = found
        return chain

    def queue_depth(self) -> int:
        """Messages waiting in the jobs' queue on the broker (not yet taken by a worker)."""
        url = broker_url(self.settings)
        if url.startswith(REDIS_SCHEMES):
            # kombu keeps a queue as one list per priority step (0, 3, 6, 9), named like its own _q_for_pri.
            # (Its passive queue_declare misses lists under a global_keyprefix, so it is read here.)
            lists = [self.settings.queue] + [f"{self.settings.queue}\x06\x16{p}" for p in (3, 6, 9)]
            with redis_client(url).pipeline(transaction=False) as pipe:
                for name in lists:
                    pipe.llen(f"{self.settings.key_prefix}:{name}")
                return sum(pipe.execute())
        with self.app.connection_for_read() as conn:
            try:
                return int(conn.default_channel.queue_declare(queue=self.settings.queue, passive=True).message_count)
            except conn.channel_errors:
                return 0  # no such queue yet (Redis drops an empty list): nothing is waiting

    def workers(self, timeout: float = 1.0) -> list[str]:
        """The workers that answer a ping within ``timeout`` seconds (it always waits that long)."""
        replies = self.app.control.ping(timeout=timeout) or []
        return sorted(name for reply in replies for name in reply)

    def check(self, timeout: float = 5.0) -> list[tuple[str, str | None]]:
        """Whether each service answers: ``[(name, None or the error), ...]`` for the broker, the result
        backend, the registry's Redis and S3 (the only check that loads boto3). The probes run at once, each
        with its client's own timeouts set to ``timeout``, and whatever a client does, one that has not
        answered after ``timeout`` seconds is reported so: the whole check takes about ``timeout``."""
        settings = self.settings

        def broker() -> None:
            with self.app.connection_for_write(connect_timeout=timeout) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)

        def registry() -> None:
            import redis

            client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()

        return _probe_all(
            {
                "broker": broker,
                "result backend": lambda: self.app.backend.get_task_meta(f"bucketzip-check-{uuid.uuid4().hex}"),
                "registry": registry,
                "s3": lambda: _probe_s3(settings, timeout),
            },
            timeout,
        )

    def close(self) -> None:
        self.app.close()


def _batch(producer: Any, size: int) -> contextlib.AbstractContextManager[Any]:
    """kombu's publish batch where it exists (Redis pipelines it; other transports publish at once)."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=max(1, size)) if batch is not None else contextlib.nullcontext()


CHECK_GRACE = 1.0  # seconds a check waits past its timeout: a client's own set-up (importing boto3...) is not the wait


def _probe_all(probes: dict[str, Callable[[], object]], timeout: float) -> list[tuple[str, str | None]]:
    """Run each probe on its own daemon thread; wait for them all until ``timeout`` has passed."""
    outcome: dict[str, str | None] = {}

    def run(name: str, probe: Callable[[], object]) -> None:
        try:
            probe()
        except Exception as exc:
            outcome[name] = redact(f"{type(exc).__name__}: {exc}")
        else:
            outcome[name] = None

    threads = [threading.Thread(target=run, args=item, name=f"check-{item[0]}", daemon=True) for item in probes.items()]
    deadline = time.monotonic() + timeout + CHECK_GRACE
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    silent = f"no answer within {timeout:g}s"
    return [(name, outcome.get(name, silent)) for name in probes]


def _probe_s3(settings: Settings, timeout: float) -> None:
    from .stores.s3 import check

    check(settings, timeout, sorted(settings.sweep_buckets))


def _canonical(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _chunks(items: Iterable[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    chunk: list[Any] = []
    start = 0
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield start, chunk
            start += size
            chunk = []
    if chunk:
        yield start, chunk


# --- module-level shortcuts on a default client made from the environment ---

_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def submit(spec: Mapping[str, Any] | JobSpec) -> JobHandle:
    """Validate ``spec`` and enqueue it on the default client; see ``Client.submit``."""
    return default_client().submit(spec)


def submit_many(specs: Iterable[Mapping[str, Any] | JobSpec]) -> Batch:
    """Validate and enqueue many specs in batches; see ``Client.submit_many``."""
    return default_client().submit_many(specs)


def status(job_id: str) -> Job:
    """The recorded job with its live progress; see ``Client.status``."""
    return default_client().status(job_id)


def wait(job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Block until the job ends and return its result; see ``Client.wait``."""
    return default_client().wait(job_id, timeout)


def retry(job_id: str) -> JobHandle:
    """Enqueue a failed job again as a new attempt; see ``Client.retry``."""
    return default_client().retry(job_id)


def cancel(job_id: str) -> str:
    """Cancel a queued or running job; see ``Client.cancel``."""
    return default_client().cancel(job_id)


def jobs(state: str | None = None, limit: int = 100) -> list[Job]:
    """Recorded jobs, newest first; see ``Client.jobs``."""
    return default_client().jobs(state, limit)


def archives(limit: int = 100, **search: Any) -> list[dict[str, Any]]:
    """The archive catalog, newest first; see ``Client.archives`` for the search keywords."""
    return default_client().archives(limit, **search)
