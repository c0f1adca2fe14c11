"""Errors as RFC 9457 problem documents (``application/problem+json``), naming the field like ``InvalidJob``.

One handler per exception family, installed by ``install``: a route raises ``InvalidJob``, ``UnknownJob``,
``JobStateError`` or ``Problem`` and the client gets a document with ``type``, ``title``, ``status``,
``detail``, ``instance`` and, where it applies, ``field`` and ``value``. Nothing else escapes as a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ..errors import ConfigError, InvalidJob, JobConflict, JobStateError, UnknownJob

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:bucketzip:problem:"  # our problem types; "about:blank" for plain HTTP errors
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """Raise in a route to answer with a problem document."""

    def __init__(self, status: int, detail: str, kind: str | None = None, **extra: Any) -> None:
        super().__init__(status, detail)
        self.status, self.detail, self.kind, self.extra = status, detail, kind, extra
        self.headers: dict[str, str] = {}


def document(status: int, detail: str, kind: str | None = None, instance: str | None = None, **extra: Any) -> dict:
    doc: dict[str, Any] = {
        "type": TYPE_BASE + kind if kind else "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        doc["instance"] = instance
    doc.update(extra)
    return doc


def response(
    status: int,
    detail: str,
    kind: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    return JSONResponse(document(status, detail, kind, instance, **extra), status, headers, MEDIA_TYPE)


def invalid_job(exc: InvalidJob, instance: str | None = None, **extra: Any) -> dict:
    status, kind = (409, "job-conflict") if isinstance(exc, JobConflict) else (422, "invalid-job")
    value = _jsonable_deep(exc.value)
    return document(status, str(exc), kind, instance, field=exc.field, value=value, reason=exc.reason, **extra)


def install(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return response(exc.status, exc.detail, exc.kind, request.url.path, exc.headers, **exc.extra)

    async def on_invalid_job(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidJob)
        doc = invalid_job(exc, request.url.path)
        return JSONResponse(doc, doc["status"], media_type=MEDIA_TYPE)

    async def on_unknown_job(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UnknownJob)
        return response(404, str(exc), "unknown-job", request.url.path, job_id=exc.job_id)

    async def on_state(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobStateError)
        return response(409, str(exc), "job-state", request.url.path, job_id=exc.job_id, state=exc.state)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        value = first.get("input")
        detail = f"{where}={_short(value)}: {first.get('msg', 'is invalid')}" if where else "the request is invalid"
        fields = [{"field": ".".join(str(p) for p in e.get("loc", ())), "reason": e.get("msg")} for e in errors[:20]]
        return response(
            422, detail, "invalid-request", request.url.path, field=where, value=_jsonable(value), errors=fields
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "Error")
        return response(exc.status_code, detail, None, request.url.path, dict(exc.headers or {}))

    async def on_config(request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return response(500, "the server is misconfigured (see its log)", "config", request.url.path)

    async def on_error(request: Request, exc: Exception) -> Response:
        if _unavailable(exc):
            log.warning("%s %s: a service is unavailable: %s", request.method, request.url.path, exc)
            detail = f"a service bucketzip needs is unavailable ({type(exc).__name__})"
            return response(503, detail, "unavailable", request.url.path)
        log.exception("%s %s failed", request.method, request.url.path)
        return response(500, "the server failed to answer (see its log)", None, request.url.path)

    app.add_exception_handler(Exception, on_error)
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(InvalidJob, on_invalid_job)
    app.add_exception_handler(UnknownJob, on_unknown_job)
    app.add_exception_handler(JobStateError, on_state)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(ConfigError, on_config)


def _unavailable(exc: BaseException) -> bool:
    """Redis or the broker did not answer: the request may succeed later (503), it is not our bug (500)."""
    import redis
    from kombu.exceptions import OperationalError

    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OperationalError | TimeoutError)


def _jsonable_deep(value: Any) -> Any:
    """A field's value as JSON (the spec's own values are JSON already; anything else is its repr)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable_deep(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable_deep(v) for k, v in value.items()}
    return repr(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value if not isinstance(value, str) else value[:200]
    return repr(value)[:200]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
