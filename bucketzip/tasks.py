"""Thin Celery tasks: decode the spec, take the job's lease, run the engine, record the outcome.

The states, the transitions and the lease are ``lifecycle``'s. Here is only how a Celery delivery maps onto
them: a delivery that finds the job held by another run sends itself again a little later and steps aside; one
that finds the job finished does nothing (or returns the recorded result); a run stopped because it lost its
lease or because its worker is shutting down records nothing and hands its message back to the broker. The
engine (s3fs, the ZIP writer) is imported inside the task, so a producer that loads this module pays nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from celery import Task, shared_task, signals
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from celery.utils.log import get_task_logger

from .config import Settings
from .errors import (
    BucketzipError,
    InvalidJob,
    JobCancelled,
    JobTimedOut,
    LeaseLost,
    RestorePending,
    TransientError,
    WorkerLost,
)
from .lifecycle import (
    CANCEL,
    CANCELLED,
    FAILED,
    LEASE,
    QUEUED,
    RETRYING,
    SHUTDOWN,
    SUCCEEDED,
    WAITING,
    Heartbeat,
    Lease,
    Lifecycle,
)
from .registry import STAT_SWEPT, Registry, error_record
from .spec import JobSpec
from .worker import SWEEP_TASK_NAME, TASK_NAME, BucketzipCelery

log = get_task_logger(__name__)
_log = logging.getLogger("bucketzip.worker")  # outside any task: no task id to show

PROGRESS = "PROGRESS"  # the Celery state a running job reports, with the Progress fields as its meta


def _settings(task: Task) -> Settings:
    app = task.app
    return app.settings if isinstance(app, BucketzipCelery) else Settings.from_env()


@shared_task(
    bind=True,
    name=TASK_NAME,
    autoretry_for=(TransientError,),
    retry_backoff=True,
    retry_jitter=True,
    acks_late=True,
    reject_on_worker_lost=True,
    Request="bucketzip.request:RedactingRequest",  # its task events mask the result's presigned URL
)
def zip_job(self: Task, spec: dict[str, Any]) -> dict[str, Any]:
    """Make the archive ``spec`` (a JobSpec dict) describes; return the JobResult dict."""
    settings = _settings(self)
    life = Lifecycle(Registry(settings))
    job_id: str = self.request.id
    try:
        parsed = JobSpec.from_dict(spec, settings)
    except InvalidJob as exc:  # not worth a retry: fail at once, saying which field is wrong
        life.settle(job_id, FAILED, {"error": json.dumps(error_record(exc))})
        raise
    lease = life.lease(job_id, parsed.destination.url)
    if not lease.acquire():
        _step_aside(self, life, spec, settings)
    try:
        start = life.start(job_id, spec, parsed.destination.url, f"{socket.gethostname()}:{os.getpid()}", lease)
        if start.run:
            return _run(self, life, lease, parsed, job_id)
        if start.state == SUCCEEDED and start.result is not None:
            log.info("job %s already succeeded; returning the recorded result", job_id)
            return start.result
        if start.state == CANCELLED:
            raise JobCancelled(job_id)
        if start.state == FAILED and start.lost:
            raise WorkerLost(job_id, start.lost)
        raise Ignore()  # finished already: the backend keeps what that run stored
    finally:
        lease.release()


def _step_aside(task: Task, life: Lifecycle, spec: dict[str, Any], settings: Settings) -> None:
    """Another run holds the job (or its destination). Send this message again after half a lease, so that if
    the holder dies the job still runs, and leave the result backend's state to the holder."""
    job = life.registry.get(task.request.id)
    if job is not None and job.state in (SUCCEEDED, FAILED, CANCELLED):
        raise Ignore()
    delay = max(1.0, settings.lock_ttl / 2)
    log.info("job %s is held by another run; looking again in %.0fs", task.request.id, delay)
    task.apply_async(args=[spec], task_id=task.request.id, countdown=delay, retries=task.request.retries)
    raise Ignore()


def _run(task: Task, life: Lifecycle, lease: Lease, spec: JobSpec, job_id: str) -> dict[str, Any]:
    from .engine import AlreadyPublished, Publication, run_job

    registry = life.registry
    spec = dataclasses.replace(spec, job_id=spec.job_id or job_id)  # so the default description names it

    def publish(progress: dict[str, Any]) -> None:
        task.update_state(task_id=job_id, state=PROGRESS, meta=progress)

    def on_upload(upload_id: str) -> None:
        registry.upload_started(job_id, spec.destination.url, upload_id)

    hostname = task.request.hostname or ""
    heartbeat = Heartbeat(life, lease, job_id, publish, lambda: shutting_down(registry, hostname))
    heartbeat.start()
    try:
        publication = Publication(job_id, lease.token, heartbeat.fence, _sealed_by_a_dead_run(registry, job_id, lease))
        try:
            result = run_job(spec, life.registry.settings, heartbeat.progress, on_upload, publication, heartbeat.bind)
            result_dict = result.to_dict()
        except AlreadyPublished as found:
            result_dict = _recorded(registry, job_id, spec, found.info)
    except BaseException as exc:
        heartbeat.stop()  # first: a renewal after the outcome gives up the lease would take it back
        if isinstance(exc, RestorePending):
            _wait_for_restores(task, life, lease, job_id, spec, exc)
        else:
            _record_failure(task, life, lease, job_id, exc, heartbeat.stop_reason)
        raise
    heartbeat.stop()
    result_dict["job_id"] = result_dict.get("job_id") or job_id
    upload_id = registry.redis.hget(registry.key("job", job_id), "upload_id")
    if upload_id is None and publication.sealed is not None:  # this run completed the dead run's upload
        upload_id = publication.sealed["sealed"]["upload_id"]
    recorded = life.finish(
        job_id,
        lease,
        SUCCEEDED,
        {"result": json.dumps(result_dict)},
        lambda pipe: registry.add_archive(pipe, job_id, result_dict, upload_id),
    )
    if not recorded:
        log.warning("job %s published, but another run holds its record now", job_id)
    return result_dict


def _wait_for_restores(
    task: Task, life: Lifecycle, lease: Lease, job_id: str, spec: JobSpec, pending: RestorePending
) -> None:
    """Archived sources are being restored (hours, often): record ``waiting`` with how many are restored so
    far, free this worker, and send the message again to look in ``restore_poll`` seconds."""
    settings = life.registry.settings
    restore = json.dumps({"restored": pending.restored, "total": pending.total, "checked": time.time()})
    if life.finish(job_id, lease, WAITING, {"restore": restore}):
        log.info("job %s: %s; looking again in %.0fs", job_id, pending, settings.restore_poll)
        args = [spec.to_dict()]
        task.apply_async(args=args, task_id=job_id, countdown=settings.restore_poll, retries=task.request.retries)
    raise Ignore() from pending


def _record_failure(
    task: Task, life: Lifecycle, lease: Lease, job_id: str, exc: BaseException, reason: str | None
) -> None:
    """Record why a run ended without an archive, if the job is still this run's; raise Ignore or Reject
    instead when the outcome belongs to another run or to a later delivery."""
    if reason == SHUTDOWN:
        life.finish(job_id, lease, QUEUED, {})
        log.warning("job %s: the worker is shutting down; its upload was aborted and it is queued again", job_id)
        raise Reject(exc, requeue=True) from exc
    if reason == LEASE or isinstance(exc, LeaseLost):
        # Another run holds the job, or this one cannot tell: hand the message back. A later delivery steps
        # aside while the job is held, and does nothing once it has ended.
        raise Reject(LeaseLost(job_id), requeue=True) from exc
    if reason == CANCEL or isinstance(exc, JobCancelled):
        exc, state = JobCancelled(job_id), CANCELLED
    elif isinstance(exc, SoftTimeLimitExceeded):
        limit = life.registry.settings.soft_time_limit
        reason = (
            f"its soft time limit of {limit}s (BUCKETZIP_JOB_SOFT_TIME_LIMIT, by default just under "
            "BUCKETZIP_JOB_TIME_LIMIT) was reached; its upload was aborted"
        )
        exc, state = JobTimedOut(job_id, reason), FAILED
    elif isinstance(exc, TransientError):
        retries_left = task.request.retries < (task.max_retries or 0)
        state = RETRYING if retries_left else FAILED
    else:
        state = FAILED
    if not life.finish(job_id, lease, state, {"error": json.dumps(error_record(exc))}):
        raise Ignore() from exc  # no longer this run's job: store nothing over the run that holds it
    if isinstance(exc, JobCancelled | JobTimedOut):
        raise exc  # in our words, to the record and to the result backend alike


def _publishing_mark(registry: Registry, job_id: str) -> dict[str, Any]:
    """What the last run of this job to pass its fence noted there (``Lifecycle.fence``); {} if none did."""
    raw = registry.redis.hget(registry.key("job", job_id), "publishing")
    return json.loads(raw) if raw else {}


def _sealed_by_a_dead_run(registry: Registry, job_id: str, lease: Lease) -> dict[str, Any] | None:
    """The mark an earlier run of this job left at its fence, if it sealed an upload there (a vault's): that
    run died after the fence, perhaps after completing the upload too, so this run completes it, not anew."""
    mark = _publishing_mark(registry, job_id)
    return mark if mark.get("sealed") and mark.get("run") != lease.token else None


def _recorded(registry: Registry, job_id: str, spec: JobSpec, info: Any) -> dict[str, Any]:
    """The result of a job whose archive an earlier run published and could not record: what that run noted
    at its fence, with what the store says of the object now."""
    from .engine import presign, run_sync
    from .stores.base import RUN_TAG

    mark = _publishing_mark(registry, job_id)
    result = dict(mark.get("result") or {}) if mark.get("run") == info.metadata.get(RUN_TAG) else {}
    result.update(destination=spec.destination.url, size=info.size, etag=info.etag, version_id=info.version_id)
    result.setdefault("storage_class", spec.storage_class)
    result["url"] = run_sync(presign(spec, registry.settings, info.version_id))
    log.info("job %s: its archive was already published by an earlier run; recording it", job_id)
    return result


# --- a worker shutting down hands its running jobs back ---

_shutdown = threading.Event()


def shutting_down(registry: Registry, hostname: str) -> bool:
    """True once this process, or the worker it belongs to, is shutting down."""
    return _shutdown.is_set() or bool(hostname and registry.redis.exists(registry.key("shutdown", hostname)))


@signals.worker_shutting_down.connect
def _on_shutting_down(sender: Any = None, **_: Any) -> None:
    # In the main process: a warm shutdown (SIGTERM, a deploy) waits for running jobs, and after the grace
    # period kills them, leaving their uploads for the sweep. Tell them to stop now (prefork children read the
    # flag in Redis at their next heartbeat): they abort their uploads and go back to the queue.
    _shutdown.set()
    settings = _current_settings()
    if settings is not None and sender:
        try:
            registry = Registry(settings)
            registry.redis.set(registry.key("shutdown", str(sender)), "1", ex=max(60, settings.job_time_limit))
        except Exception:
            log.warning("could not tell running jobs that the worker is shutting down", exc_info=True)


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    _shutdown.clear()
    settings = _current_settings()
    hostname = getattr(sender, "hostname", None)
    if settings is not None and hostname:
        registry = Registry(settings)
        registry.redis.delete(registry.key("shutdown", hostname))  # a worker restarted under the same name


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    # Before the pool is forked: import the engine and the stores' SDKs once, here, rather than in every pool
    # process's first job.
    settings = _current_settings()
    if settings is not None:
        from . import engine, stores  # noqa: F401

        stores.preload(settings)


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    # A prefork child that gets SIGTERM itself (systemd and some supervisors signal the whole process group)
    # stops its job cleanly instead of dying with its upload open.
    signal.signal(signal.SIGTERM, lambda signum, frame: _shutdown.set())
    # Make the stores' clients on a thread: Celery gives a new pool process a few seconds to report for work,
    # and a credentials lookup may take longer than that. A job that comes first waits for them (or makes them).
    # The allocator is tuned first, as a job would: a thread that allocates before it gets an arena of its own.
    settings = _current_settings()
    if settings is not None:
        from .allocator import tune_allocator

        tune_allocator(settings.malloc_arena_max)
        threading.Thread(target=_warm, args=(settings,), name="bucketzip-warm", daemon=True).start()


def _warm(settings: Settings) -> None:
    from . import stores

    try:
        stores.warm(settings)
    except Exception:
        _log.warning("could not make the stores' clients ahead of the first job", exc_info=True)
    else:
        _log.info("pool process %d: stores ready", os.getpid())


@signals.task_postrun.connect
def _on_task_done(sender: Any = None, **_: Any) -> None:
    # After a job, once its result is stored (the producer does not wait for this): give the heap's free
    # pages back to the OS, so that a pool process's RSS between jobs stays flat instead of keeping the
    # high-water mark of the largest job it ever ran.
    if getattr(sender, "name", None) == TASK_NAME:
        from .allocator import release_memory

        release_memory()


def _current_settings() -> Settings | None:
    from celery import current_app

    app = current_app._get_current_object()
    return app.settings if isinstance(app, BucketzipCelery) else None


# --- the sweep ---


@shared_task(bind=True, name=SWEEP_TASK_NAME, acks_late=True)
def sweep(self: Task, now: float | None = None) -> dict[str, Any]:
    """Abort stale multipart uploads that belong to no running job; trim the job records. ``now`` (Unix
    time, default the present) is the moment ages are measured from."""
    settings = _settings(self)
    registry = Registry(settings)
    report = sweep_uploads(settings, registry, now)
    report["trimmed"] = registry.trim()
    return report


def sweep_uploads(settings: Settings, registry: Registry, now: float | None = None) -> dict[str, Any]:
    """Abort the multipart uploads older than ``stale_upload_age`` that no running job owns.

    With ``BUCKETZIP_SWEEP_BUCKETS`` set, every stale upload in those buckets is a candidate (they are
    bucketzip's alone); otherwise only the uploads the registry saw a job create, in the buckets of recorded
    destinations, so that other tools' uploads in a shared bucket are left alone."""
    from .engine import run_sync
    from .stores import store_for

    cutoff = (time.time() if now is None else now) - settings.stale_upload_age
    explicit = bool(settings.sweep_buckets)
    buckets = sorted(settings.sweep_buckets or registry.buckets())
    aborted: list[str] = []
    failed: dict[str, str] = {}
    kept = 0
    for bucket in buckets:
        # A vault is recorded (and may be listed in SWEEP_BUCKETS) as glacier://VAULT; a bucket by its name.
        protocol, _, name = bucket.rpartition("://")
        store: Any = store_for(protocol or "s3", settings)
        try:
            uploads = run_sync(store.list_uploads(name))
        except BucketzipError as exc:  # a deleted bucket, a denied one: say so, and sweep the others
            failed[bucket] = str(exc)
            log.warning("sweep: cannot list the uploads of %s: %s", bucket, exc)
            continue
        for up in uploads:
            upload_id, key = up["UploadId"], up["Key"]
            owner = registry.upload_owner(upload_id)
            if up["Initiated"].timestamp() > cutoff or (owner is None and not explicit):
                continue
            if owner is not None and registry.is_running(owner):
                kept += 1
                continue
            run_sync(store.abort_upload(name, key, upload_id))
            registry.forget_upload(upload_id)
            url = bucket if protocol else f"s3://{bucket}/{key}"
            aborted.append(url)
            log.info("aborted stale upload %s of %s (job %s)", upload_id, url, owner)
    if aborted:
        registry.count(STAT_SWEPT, len(aborted))  # stats (issue 9)
    return {"buckets": buckets, "aborted": aborted, "kept_running": kept, "failed": failed}
