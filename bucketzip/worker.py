"""The Celery app, configured from the settings. Start a worker with Celery's own CLI::

    celery -A bucketzip.worker worker --loglevel=INFO       # the zippers
    celery -A bucketzip.worker beat                         # the periodic sweep of stale uploads

Redis is the broker and the result backend unless ``BUCKETZIP_BROKER_URL`` / ``BUCKETZIP_RESULT_BACKEND`` say
otherwise (RabbitMQ works as the broker; kombu's SQLite transport is the embedded fallback of the demo).
Messages are JSON only. A job's message is acknowledged when the job ends, not when it starts, and requeued if
the process running it dies; each worker process takes one job at a time; and the broker's visibility timeout
is longer than the longest job may run, so a healthy long job is never handed to a second worker.

``make_app(settings)`` builds an app; the module attribute ``app`` (what ``celery -A`` finds) is built from
the environment on first use, so importing this module costs nothing and reads nothing.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from . import redact
from .config import Settings

TASK_NAME = "bucketzip.zip"
SWEEP_TASK_NAME = "bucketzip.sweep"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class BucketzipCelery(Celery):
    """A Celery app that carries the bucketzip settings it was made from (tasks read ``self.app.settings``)."""

    settings: Settings


def broker_url(settings: Settings) -> str:
    return settings.broker_url or settings.redis_url


def backend_url(settings: Settings) -> str:
    return settings.result_backend or settings.redis_url


def make_app(settings: Settings | None = None, main: str = "bucketzip") -> BucketzipCelery:
    """A Celery app for ``settings`` (default: from the environment). Tasks are registered on it when the
    worker imports ``bucketzip.tasks``; a producer never needs them, it sends by name."""
    settings = settings or Settings.from_env()
    redact.install()  # results carry presigned URLs, which Celery would log at INFO
    broker, backend = broker_url(settings), backend_url(settings)
    app = BucketzipCelery(main, broker=broker, backend=backend, include=["bucketzip.tasks"], set_as_current=False)
    app.settings = settings
    prefix = settings.key_prefix + ":"
    embedded = broker.startswith("sqla+")
    # Redis (and SQS) redeliver a message not acknowledged within the visibility timeout; RabbitMQ ignores the
    # option, and the SQLite transport hands its options to SQLAlchemy, which rejects it.
    broker_options: dict[str, Any] = {} if embedded else {"visibility_timeout": settings.visibility_timeout}
    if broker.startswith(REDIS_SCHEMES):
        broker_options["global_keyprefix"] = prefix
    backend_options: dict[str, Any] = {}
    if backend.startswith(REDIS_SCHEMES):
        backend_options["global_keyprefix"] = prefix
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # No STARTED state: the registry records ``running``, and a delivery that steps aside or finds its job
        # finished must leave the result backend to the run that owns the job.
        task_track_started=False,
        task_time_limit=settings.job_time_limit,
        task_soft_time_limit=settings.soft_time_limit,
        broker_transport_options=broker_options,
        result_backend_transport_options=backend_options,
        result_expires=settings.job_retention,
        broker_connection_retry_on_startup=True,
        # Flower follows jobs through the workers' events; the SQLite transport cannot broadcast them. The
        # producer sends no "task-sent" event: it would double the round trips of a bulk submission.
        worker_send_task_events=settings.task_events and not embedded,
        task_send_sent_event=False,
        worker_enable_remote_control=not embedded,
        # Retry policy lives on the settings, so it is applied here rather than in the decorator.
        task_annotations={
            TASK_NAME: {"max_retries": settings.max_retries, "retry_backoff_max": settings.retry_backoff_max}
        },
        beat_schedule={
            "bucketzip-sweep": {"task": SWEEP_TASK_NAME, "schedule": float(settings.sweep_interval)},
        },
        worker_hijack_root_logger=False,
    )
    return app


_app: BucketzipCelery | None = None


def __getattr__(name: str) -> Any:
    # ``celery -A bucketzip.worker`` looks up ``app`` here; build it (from the environment) on first use.
    global _app
    if name == "app":
        if _app is None:
            _app = make_app()
            _app.set_current()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
