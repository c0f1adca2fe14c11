"""Thin Celery tasks: decode the spec, guard the run, call the engine, return the result dict.

``bucketzip.zip`` guards each run with a lease in Redis (``registry.Lock``) on the job and on its destination,
so a message delivered twice (a requeue after a crash, a visibility timeout) never runs twice at once. A
delivery that finds the lease taken sends itself again a little later and steps aside; one that finds the job
already succeeded returns the recorded result instead of making the archive again.

While the engine runs, a heartbeat thread renews the lease, publishes the latest progress as state
``PROGRESS``, and watches for a cancellation, which the engine's progress callback (on the IO thread, so it
only reads a flag) raises as ``JobCancelled``: the engine then aborts the upload. The engine, and with it s3fs
and the ZIP writer, is imported inside the task, so a producer that loads this module pays nothing for it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from .config import Settings
from .errors import InvalidJob, JobCancelled, TransientError
from .registry import CANCELLED, FAILED, RETRYING, SUCCEEDED, Lock, Registry
from .spec import JobSpec
from .worker import SWEEP_TASK_NAME, TASK_NAME, BucketzipCelery

log = get_task_logger(__name__)

PROGRESS = "PROGRESS"  # the Celery state a running job reports, with the Progress fields as its meta
MIN_HEARTBEAT = 0.05  # seconds: the heartbeat never spins faster than this, whatever progress_interval says


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
)
def zip_job(self: Task, spec: dict[str, Any]) -> dict[str, Any]:
    """Make the archive ``spec`` (a JobSpec dict) describes; return the JobResult dict."""
    settings = _settings(self)
    registry = Registry(settings)
    job_id: str = self.request.id
    try:
        parsed = JobSpec.from_dict(spec, settings)
    except InvalidJob as exc:  # not worth a retry: fail at once, saying which field is wrong
        registry.failed(job_id, exc, FAILED)
        raise
    destination = parsed.destination.url

    done = _finished(registry, job_id)
    if done is not None:
        return done
    if registry.cancel_requested(job_id):
        cancelled = JobCancelled(job_id)
        registry.failed(job_id, cancelled, CANCELLED)
        raise cancelled
    lock = registry.lock(job_id, destination)
    if not lock.acquire():
        _step_aside(self, spec, settings)
    try:
        done = _finished(registry, job_id)  # it may have ended while we waited for the lock
        if done is not None:
            return done
        registry.started(job_id, spec, destination, f"{socket.gethostname()}:{os.getpid()}")
        return _run(self, registry, lock, parsed, job_id, settings)
    finally:
        lock.release()


def _finished(registry: Registry, job_id: str) -> dict[str, Any] | None:
    job = registry.get(job_id)
    if job is None:
        return None
    if job.state == SUCCEEDED and job.result is not None:
        log.info("job %s already succeeded; returning the recorded result", job_id)
        return job.result
    return None


def _step_aside(task: Task, spec: dict[str, Any], settings: Settings) -> None:
    """Another delivery holds the job (or its destination). Send this message again after half a lease, so
    that if the holder dies the job still runs, and leave the result backend's state to the holder."""
    delay = max(1.0, settings.lock_ttl / 2)
    log.info("job %s is held by another run; looking again in %.0fs", task.request.id, delay)
    task.apply_async(args=[spec], task_id=task.request.id, countdown=delay, retries=task.request.retries)
    raise Ignore()


def _run(task: Task, registry: Registry, lock: Lock, spec: JobSpec, job_id: str, settings: Settings) -> dict[str, Any]:
    from .engine import Progress, run_job

    heartbeat = Heartbeat(task, registry, lock, job_id, settings)

    def on_progress(p: Progress) -> None:
        # Runs on the engine's IO thread: store and check a flag, nothing more.
        heartbeat.latest = p.to_dict()
        if heartbeat.cancelled.is_set():
            raise JobCancelled(job_id)

    def on_upload(upload_id: str) -> None:
        registry.upload_started(job_id, spec.destination.url, upload_id)

    heartbeat.start()
    try:
        result = run_job(spec, settings, on_progress, on_upload).to_dict()
    except JobCancelled as exc:
        registry.failed(job_id, exc, CANCELLED)
        raise
    except TransientError as exc:
        retries_left = task.request.retries < (task.max_retries or 0)
        registry.failed(job_id, exc, RETRYING if retries_left else FAILED)
        raise  # autoretry_for sends it again with backoff, or fails it
    except BaseException as exc:
        registry.failed(job_id, exc, FAILED)
        raise
    finally:
        heartbeat.stop()
    result["job_id"] = result.get("job_id") or job_id
    registry.succeeded(job_id, result)
    return result


class Heartbeat(threading.Thread):
    """While a job runs: renew its lease, publish its progress, notice a cancellation."""

    def __init__(self, task: Task, registry: Registry, lock: Lock, job_id: str, settings: Settings) -> None:
        super().__init__(name=f"bucketzip-heartbeat-{job_id}", daemon=True)
        self.task, self.registry, self.lock, self.job_id = task, registry, lock, job_id
        self.interval = max(settings.progress_interval, MIN_HEARTBEAT)
        self.renew_every = settings.lock_ttl / 3
        self.latest: dict[str, Any] | None = None
        self.cancelled = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        published: dict[str, Any] | None = None
        renewed = time.monotonic()
        while not self._halt.wait(self.interval):
            try:
                if time.monotonic() - renewed >= self.renew_every:
                    renewed = time.monotonic()
                    if not self.lock.renew():
                        log.warning("job %s lost its lock; cancelling this run", self.job_id)
                        self.cancelled.set()
                if self.registry.cancel_requested(self.job_id):
                    self.cancelled.set()
                latest = self.latest
                if latest is not None and latest is not published and not self._halt.is_set():
                    self.task.update_state(task_id=self.job_id, state=PROGRESS, meta=latest)
                    published = latest
            except Exception:  # a Redis blip must not kill the heartbeat; the next beat tries again
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@shared_task(bind=True, name=SWEEP_TASK_NAME, acks_late=True)
def sweep(self: Task) -> dict[str, Any]:
    """Abort stale multipart uploads that belong to no running job; trim the job records."""
    settings = _settings(self)
    registry = Registry(settings)
    report = sweep_uploads(settings, registry)
    report["trimmed"] = registry.trim()
    return report


def sweep_uploads(settings: Settings, registry: Registry, now: float | None = None) -> dict[str, Any]:
    """Abort the multipart uploads older than ``stale_upload_age`` that no running job owns.

    With ``BUCKETZIP_SWEEP_BUCKETS`` set, every stale upload in those buckets is a candidate (they are
    bucketzip's alone); otherwise only the uploads the registry saw a job create, in the buckets of recorded
    destinations, so that other tools' uploads in a shared bucket are left alone."""
    from .engine import run_sync
    from .stores import store_for

    store: Any = store_for("s3", settings)
    cutoff = (time.time() if now is None else now) - settings.stale_upload_age
    explicit = bool(settings.sweep_buckets)
    buckets = sorted(settings.sweep_buckets or registry.buckets())
    aborted: list[str] = []
    kept = 0
    for bucket in buckets:
        for up in run_sync(store.list_uploads(bucket)):
            upload_id, key = up["UploadId"], up["Key"]
            owner = registry.upload_owner(upload_id)
            if up["Initiated"].timestamp() > cutoff or (owner is None and not explicit):
                continue
            if owner is not None and registry.is_running(owner):
                kept += 1
                continue
            run_sync(store.abort_upload(bucket, key, upload_id))
            registry.forget_upload(upload_id)
            aborted.append(f"s3://{bucket}/{key}")
            log.info("aborted stale upload %s of s3://%s/%s (job %s)", upload_id, bucket, key, owner)
    return {"buckets": buckets, "aborted": aborted, "kept_running": kept}
