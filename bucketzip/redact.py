"""Secrets out of logs: presigned URLs' signatures and session tokens, passwords in service URLs.

A job's result carries a presigned URL (with ``X-Amz-Security-Token`` under temporary credentials), and Celery
logs every task's return value at INFO ("Task bucketzip.zip[...] succeeded in 2.1s: {...}"); service URLs
(``amqp://user:password@host``) end up in messages too. ``RedactingFilter`` rewrites each log record it sees
through ``redact``; ``install()`` puts it where a worker's records are made and written.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "**"

# The query parameters that make a presigned URL work (SigV4 and SigV2): whoever has them can read the object.
_QUERY_SECRETS = re.compile(
    r"(?i)\b(X-Amz-Signature|X-Amz-Security-Token|X-Amz-Credential|Signature|AWSAccessKeyId|x-amz-security-token)"
    r"=[^&\s'\"<>]+"
)
# scheme://user:password@host -> scheme://user:**@host (kombu's maybe_sanitize_url does this to one URL; this
# finds them inside any text).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s'\"]*):[^@/\s'\"]+@")


def redact(text: str) -> str:
    """``text`` with every presigned URL's signature, credential and token, and every URL password, masked."""
    text = _QUERY_SECRETS.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return _USERINFO.sub(rf"\1:{MASK}@", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and Celery's ``data`` extra, and a formatted traceback) through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        data: Any = getattr(record, "data", None)  # celery.app.trace passes its context here for handlers
        if isinstance(data, dict):
            record.data = {k: redact(v) if isinstance(v, str) else v for k, v in data.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactingFilter()
# Where records carrying results or URLs are made: a filter on a logger applies to the records made there.
LOGGERS = ("celery.app.trace", "celery.worker.request", "celery.worker.strategy")


def install() -> None:
    """Redact the records made by Celery's task tracer and request handling, and everything the worker's log
    handlers write once Celery has set them up (unless the application configures logging itself, through
    Celery's ``setup_logging`` signal: then the loggers' own filters still apply). Idempotent."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    from celery.signals import after_setup_logger, after_setup_task_logger

    after_setup_logger.connect(_filter_handlers, weak=False, dispatch_uid="bucketzip-redact")
    after_setup_task_logger.connect(_filter_handlers, weak=False, dispatch_uid="bucketzip-redact-task")


def _filter_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
    for handler in logger.handlers if logger is not None else ():
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
