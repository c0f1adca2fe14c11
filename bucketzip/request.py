"""A zip job's request in a worker, whose task events carry no secrets.

Workers send task events (``BUCKETZIP_TASK_EVENTS``), which Flower shows: ``task-succeeded`` carries the job's
result as text, and a result's ``url`` is a presigned URL, a key to the archive for whoever holds it. This
request sends every text field of its events through ``redact``, as the worker's log records are: the URL is
there with its signature, credential and token masked. The result backend keeps the result whole, for the
producer. Named by ``tasks.zip_job`` (``Request=``) and imported by the worker alone: a producer never loads it.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from .redact import redact


class RedactingRequest(Request):
    def send_event(self, type: str, **fields: Any) -> None:
        super().send_event(type, **{k: redact(v) if isinstance(v, str) else v for k, v in fields.items()})
