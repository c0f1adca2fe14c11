"""/v1: the JSON API. Thin: every route is a call on the shared ``Client`` and a shape for its answer.

The request body of ``POST /v1/jobs`` is the job spec itself (see README "The job spec"); ``JobSpec`` in the
client validates it, and an invalid one is a 422 problem document naming the field and the value.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Body, Query, Request, Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, StreamingResponse

from ..client import Client
from ..errors import InvalidJob
from ..registry import STATES, TERMINAL, Job
from . import problems
from .problems import Problem

MAX_PAGE = 500  # items in one page of jobs or archives
SSE_INTERVAL = 0.5  # seconds between reads of a followed job (progress is published every 0.5 s by default)
SSE_KEEPALIVE = 15.0  # seconds between comments on a quiet stream, so proxies keep it open

# The job spec's shape, for the OpenAPI document (the authority is JobSpec.from_dict; see README).
SOURCE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "description": "s3://bucket/key, s3://bucket/prefix/ or s3://bucket/glob*"},
        {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string"}, "name": {"type": "string"}},
        },
    ]
}
JOB_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["sources", "destination"],
    "properties": {
        "sources": {"type": "array", "items": SOURCE_SCHEMA, "minItems": 1},
        "destination": {"type": "string", "example": "s3://exports/user-42/trip.zip"},
        "compression": {"type": "string", "enum": ["auto", "store", "deflate"]},
        "compression_level": {"type": "integer", "minimum": 0, "maximum": 9},
        "on_missing": {"type": "string", "enum": ["fail", "skip"]},
        "on_duplicate": {"type": "string", "enum": ["rename", "fail", "skip"]},
        "storage_class": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "content_disposition": {"type": "string"},
        "presign_expires": {"type": "integer", "minimum": 1, "maximum": 604800},
        "job_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]+$"},
    },
    "example": {"sources": ["s3://photos/2024/"], "destination": "s3://exports/2024.zip", "job_id": "order-42"},
}


class JobOut(BaseModel):
    """A job as recorded, with its live progress while it runs."""

    id: str
    state: str
    destination: str | None = None
    spec: dict[str, Any] = {}
    attempt: int = 1
    runs: int = 0
    retry_of: str | None = None
    retried_by: str | None = None
    created: float | None = None
    updated: float | None = None
    started: float | None = None
    finished: float | None = None
    worker: str | None = None
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    links: dict[str, str] = {}


class Accepted(BaseModel):
    id: str
    state: str
    links: dict[str, str]


class JobPage(BaseModel):
    jobs: list[JobOut]
    next: str | None


class BatchItem(BaseModel):
    position: int
    id: str


class BatchInvalid(BaseModel):
    position: int
    field: str
    value: Any = None
    detail: str


class BatchOut(BaseModel):
    accepted: list[BatchItem]
    invalid: list[BatchInvalid]


class Retried(BaseModel):
    id: str
    retry_of: str
    links: dict[str, str]


class RetriedAll(BaseModel):
    retried: list[Retried]


class Cancelled(BaseModel):
    id: str
    state: str


class ArchivePage(BaseModel):
    archives: list[dict[str, Any]]
    next: str | None


class Stats(BaseModel):
    counts: dict[str, int]
    queue_depth: int | None
    workers: list[str] | None


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "events": f"/v1/jobs/{job_id}/events", "page": f"/jobs/{job_id}"}


def job_out(job: Job) -> JobOut:
    data = job.to_dict()
    data.pop("upload_id", None)
    return JobOut(**data, links=job_links(job.id))


PROBLEM = {"model": dict, "content": {problems.MEDIA_TYPE: {}}}
COMMON = {401: PROBLEM, 403: PROBLEM, 422: PROBLEM}


def router(client: Client, auth: Any, gauges: Any) -> APIRouter:
    # The bearer scheme, declared for the OpenAPI document (/docs's Authorize button); auth.require enforces it.
    declared = [Security(HTTPBearer(auto_error=False, description="a token of BUCKETZIP_API_TOKENS"))]
    api = APIRouter(prefix="/v1", tags=["jobs"], responses=COMMON, dependencies=declared)  # type: ignore[arg-type]

    def check_state(state: str | None) -> None:
        if state is not None and state not in STATES:
            raise Problem(422, f"state={state!r}: must be one of {', '.join(STATES)}", "invalid-request", field="state")

    def page_args(cursor: str | None, limit: int) -> None:
        if cursor is not None and not cursor:
            raise Problem(422, "cursor='': must not be empty", "invalid-request", field="cursor", value=cursor)

    @api.post(
        "/jobs",
        status_code=202,
        response_model=Accepted,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": JOB_SPEC_SCHEMA}}}},
    )
    def submit(request: Request, spec: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008
        """Validate a job spec and enqueue it. Idempotent by `job_id`: a spec whose `job_id` is already
        recorded is not queued again, and the recorded job is answered."""
        auth.require(request, "submit")
        handle = client.submit(spec)
        job = client.registry.get(handle.id)
        body = Accepted(id=handle.id, state=job.state if job else "queued", links=job_links(handle.id))
        return JSONResponse(body.model_dump(), 202, {"Location": f"/v1/jobs/{handle.id}"})

    @api.post(
        "/jobs/batch",
        status_code=202,
        response_model=BatchOut,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "array", "items": JOB_SPEC_SCHEMA}},
                    "application/x-ndjson": {"schema": {"type": "string", "description": "one job spec per line"}},
                },
            }
        },
    )
    async def batch(request: Request) -> BatchOut:
        """Enqueue many jobs: a JSON array of specs, or JSON Lines (one spec per line, with a content type of
        `application/x-ndjson` or `application/jsonl`). Answers the accepted ids and the invalid items, each
        by its position (from 0; for JSON Lines, the line number less one)."""
        auth.require(request, "submit")
        body = await request.body()
        specs, invalid = _parse_batch(body, request.headers.get("content-type", ""))
        positions = [pos for pos, _ in specs]
        result = await run_in_threadpool(client.submit_many, [spec for _, spec in specs])
        bad = {pos for pos, _ in result.invalid}
        for pos, exc in result.invalid:
            invalid.append(_invalid_item(positions[pos], exc))
        accepted = [
            BatchItem(position=positions[i], id=h.id)
            for i, h in zip((i for i in range(len(specs)) if i not in bad), result.accepted, strict=True)
        ]
        return BatchOut(accepted=accepted, invalid=sorted(invalid, key=lambda item: item.position))

    @api.get("/jobs", response_model=JobPage)
    def list_jobs(
        request: Request,
        state: str | None = Query(None, description=f"one of {', '.join(STATES)}"),
        cursor: str | None = Query(None, description="the `next` of the previous page"),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
    ) -> JobPage:
        """Recorded jobs, newest first, one page at a time; follow `next` until it is null."""
        auth.require(request, "read")
        check_state(state)
        page_args(cursor, limit)
        try:
            jobs, following = client.jobs_page(state, cursor, limit)
        except ValueError as exc:
            raise Problem(422, f"cursor: {exc}", "invalid-request", field="cursor", value=cursor) from None
        live = client.progress([j.id for j in jobs if j.state == "running"])
        for job in jobs:
            job.progress = live.get(job.id)
        return JobPage(jobs=[job_out(j) for j in jobs], next=following)

    @api.post("/jobs/retry-failed", response_model=RetriedAll, tags=["admin"])
    def retry_failed(request: Request) -> RetriedAll:
        """Retry every job recorded as failed, each as a new job linked to it."""
        auth.require(request, "admin")
        handles = client.retry_failed()
        jobs = client.registry.get_many([h.id for h in handles])
        return RetriedAll(retried=[Retried(id=j.id, retry_of=j.retry_of or "", links=job_links(j.id)) for j in jobs])

    @api.get("/jobs/{job_id}", response_model=JobOut)
    def get_job(request: Request, job_id: str) -> JobOut:
        """A job: state, live progress, result (with the download `url` if presigned), error (`type`,
        `message`), attempt, `retry_of`, `retried_by` and timestamps (Unix seconds)."""
        auth.require(request, "job")
        return job_out(client.status(job_id))

    @api.get(
        "/jobs/{job_id}/events",
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    )
    async def events(request: Request, job_id: str) -> StreamingResponse:
        """Server-Sent Events of the job until it ends: `progress` events (the progress fields) while it
        runs, a `state` event at each change of state (the whole job), and a last `end` event."""
        auth.require(request, "job")
        first = await run_in_threadpool(client.status, job_id)  # 404 before the stream starts
        return StreamingResponse(
            _follow(request, client, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @api.post("/jobs/{job_id}/retry", status_code=202, response_model=Retried, tags=["admin"])
    def retry(request: Request, job_id: str) -> JSONResponse:
        """Enqueue a failed or cancelled job again, as a new job (`attempt` + 1) linked to it."""
        auth.require(request, "admin")
        handle = client.retry(job_id)
        body = Retried(id=handle.id, retry_of=job_id, links=job_links(handle.id))
        return JSONResponse(body.model_dump(), 202, {"Location": f"/v1/jobs/{handle.id}"})

    @api.post("/jobs/{job_id}/cancel", status_code=202, response_model=Cancelled, tags=["admin"])
    def cancel(request: Request, job_id: str) -> Cancelled:
        """Cancel a job: a queued one never runs (`cancelled`); a running one stops within a heartbeat and
        aborts its upload (`cancelling`); a job that already ended answers the state it ended in."""
        auth.require(request, "admin")
        return Cancelled(id=job_id, state=client.cancel(job_id))

    @api.get("/archives", response_model=ArchivePage, tags=["archives"])
    def archives(
        request: Request,
        prefix: str | None = Query(None, description="destination URLs starting with this, e.g. s3://exports/u42/"),
        cursor: str | None = Query(None, description="the `next` of the previous page"),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
    ) -> ArchivePage:
        """The archive catalog (`bucketzip.catalog`), newest first, one page at a time."""
        auth.require(request, "read")
        page_args(cursor, limit)
        found, following = archive_page(client, prefix, cursor, limit)
        return ArchivePage(archives=found, next=following)

    @api.get("/stats", response_model=Stats, tags=["monitoring"])
    def stats(request: Request) -> Stats:
        """Jobs by state, the broker's queue depth and the workers online (null when unknown)."""
        auth.require(request, "read")
        snap = gauges.snapshot()
        return Stats(counts=snap.counts, queue_depth=snap.queue_depth, workers=snap.workers)

    return api


def archive_page(
    client: Client, prefix: str | None, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of ``Client.archives`` and the next page's cursor (the id of its last record, when there is more)."""
    found = client.archives(limit + 1, prefix=prefix or None, cursor=cursor or None)
    return found[:limit], found[limit - 1]["id"] if len(found) > limit else None


def _parse_batch(body: bytes, content_type: str) -> tuple[list[tuple[int, Any]], list[BatchInvalid]]:
    """``[(position, spec)]`` to submit and the items that are not even JSON objects."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(422, "the body is not UTF-8", "invalid-request", field="body") from None
    media = content_type.split(";")[0].strip().lower()
    if media in ("application/x-ndjson", "application/jsonl", "application/json-lines", "application/jsonlines"):
        items: list[tuple[int, Any]] = []
        invalid: list[BatchInvalid] = []
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                items.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                invalid.append(_invalid_item(n, InvalidJob("spec", line.strip()[:80], f"is not valid JSON: {exc}")))
        return items, invalid
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(422, f"the body is not valid JSON: {exc}", "invalid-request", field="body") from None
    if not isinstance(parsed, list):
        raise Problem(
            422, "the body must be a JSON array of job specs (or JSON Lines)", "invalid-request", field="body"
        )
    return list(enumerate(parsed)), []


def _invalid_item(position: int, exc: InvalidJob) -> BatchInvalid:
    return BatchInvalid(position=position, field=exc.field, value=problems._jsonable_deep(exc.value), detail=str(exc))


async def _follow(request: Request, client: Client, job: Job) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    state_sent: str | None = None
    progress_sent: dict[str, Any] | None = None
    quiet_since = asyncio.get_running_loop().time()
    while True:
        if job.state != state_sent:
            yield _event("state", job_out(job).model_dump())
            state_sent = job.state
        if job.progress and job.progress != progress_sent and job.state not in TERMINAL:
            yield _event("progress", job.progress)
            progress_sent = job.progress
            quiet_since = asyncio.get_running_loop().time()
        if job.state in TERMINAL:
            yield _event("end", {"id": job.id, "state": job.state})
            return
        if asyncio.get_running_loop().time() - quiet_since > SSE_KEEPALIVE:
            yield b": keep-alive\n\n"
            quiet_since = asyncio.get_running_loop().time()
        await asyncio.sleep(SSE_INTERVAL)
        if await request.is_disconnected():
            return
        job = await run_in_threadpool(client.status, job.id)


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()
