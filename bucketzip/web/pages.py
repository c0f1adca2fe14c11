"""The dashboard: server-rendered pages, and the fragments ``static/app.js`` swaps in every 1.5 s.

Jinja2 autoescapes every value, so object keys, error messages and metadata render as text. Pages need the
read role (admins also see Retry and Cancel); without a session they redirect to the login form, which sets
an HttpOnly, SameSite=Strict cookie. Forms that change something carry the session's CSRF token.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response

from ..cli import fmt_bytes
from ..client import Client
from ..errors import JobStateError, UnknownJob
from ..registry import RUNNING, STATES, TERMINAL
from .api import archive_page
from .auth import SESSION_COOKIE, Auth, Principal
from .live import Gauges
from .problems import Problem

PAGE = 50  # jobs per dashboard page
REFRESH_MS = 1000  # how often the live regions refresh (the issue asks for at least every 2 s)
# The order tabs appear in; a state the registry reports that is not listed here is shown after these.
TAB_ORDER = ("queued", "waiting", "running", "retrying", "succeeded", "failed", "cancelled", "retried")
RETRYABLE = frozenset({"failed", "cancelled"})

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _percent(progress: dict[str, Any] | None) -> float:
    if not progress:
        return 0.0
    total = progress.get("bytes_total") or 0
    if total:
        return min(100.0, 100.0 * (progress.get("bytes_done") or 0) / total)
    files = progress.get("files_total") or 0
    return min(100.0, 100.0 * (progress.get("files_done") or 0) / files) if files else 0.0


templates.env.filters.update(
    bytes=lambda n: fmt_bytes(n or 0),
    duration=_duration,
    when=_when,
    percent=_percent,
    pretty=lambda v: json.dumps(v, indent=2, ensure_ascii=False, sort_keys=True),  # then autoescaped, as text
)


def tabs(counts: dict[str, int]) -> list[tuple[str, int]]:
    known = [s for s in TAB_ORDER if s in counts]
    return [(s, counts[s]) for s in known + sorted(set(counts) - set(known))]


def router(client: Client, auth: Auth, gauges: Gauges) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    def viewer(request: Request, permission: str = "read", csrf: str | None = None) -> Principal:
        try:
            return auth.require(request, permission, csrf)
        except Problem as problem:
            if problem.status == 401 and request.method == "GET":
                raise _Redirect(f"/login?next={quote(_here(request), safe='')}") from None
            raise _PageError(problem.status, problem.detail) from None

    def render(request: Request, name: str, who: Principal, status: int = 200, **context: Any) -> Response:
        context.update(who=who, csrf=who.csrf, open=auth.open, refresh_ms=REFRESH_MS)
        return templates.TemplateResponse(request, name, context, status_code=status)

    def board(request: Request, state: str | None, cursor: str | None) -> dict[str, Any]:
        snap = gauges.snapshot()
        if state is None:
            state = RUNNING if snap.counts.get(RUNNING) else "queued"
        if state not in STATES:
            raise Problem(422, f"state={state!r}: must be one of {', '.join(STATES)}", "invalid-request", field="state")
        try:
            jobs, following = client.jobs_page(state, cursor or None, PAGE)
        except ValueError as exc:
            raise Problem(422, f"cursor: {exc}", "invalid-request", field="cursor") from None
        live = client.progress([j.id for j in jobs if j.state == RUNNING])
        for job in jobs:
            job.progress = live.get(job.id)
        return {
            "state": state,
            "cursor": cursor,
            "tabs": tabs(snap.counts),
            "snap": snap,
            "jobs": jobs,
            "next": following,
        }

    @pages.get("/")
    def dashboard(request: Request, state: str | None = None, cursor: str | None = None) -> Response:
        who = viewer(request)
        return render(request, "dashboard.html", who, **board(request, state, cursor))

    @pages.get("/partials/board")
    def board_fragment(request: Request, state: str | None = None, cursor: str | None = None) -> Response:
        who = viewer(request)
        return render(request, "_board.html", who, **board(request, state, cursor))

    def job_context(job_id: str) -> dict[str, Any]:
        job = client.status(job_id)
        return {
            "job": job,
            "attempts": client.attempts(job),
            "terminal": job.state in TERMINAL,
            "retryable": job.state in RETRYABLE and not job.retried_by,
        }

    @pages.get("/jobs/{job_id}")
    def job_page(request: Request, job_id: str) -> Response:
        who = viewer(request, "job")
        try:
            context = job_context(job_id)
        except UnknownJob as exc:
            return render(request, "error.html", who, 404, message=str(exc))
        return render(request, "job.html", who, **context)

    @pages.get("/partials/jobs/{job_id}")
    def job_fragment(request: Request, job_id: str) -> Response:
        who = viewer(request, "job")
        return render(request, "_job.html", who, **job_context(job_id))

    @pages.post("/jobs/{job_id}/retry")
    def retry(request: Request, job_id: str, csrf_token: str = Form("")) -> Response:
        viewer(request, "admin", csrf_token)
        try:
            handle = client.retry(job_id)
        except (JobStateError, UnknownJob) as exc:
            who = viewer(request, "admin", csrf_token)
            return render(request, "error.html", who, 409, message=str(exc))
        return RedirectResponse(f"/jobs/{quote(handle.id)}", 303)

    @pages.post("/jobs/{job_id}/cancel")
    def cancel(request: Request, job_id: str, csrf_token: str = Form("")) -> Response:
        viewer(request, "admin", csrf_token)
        client.cancel(job_id)
        return RedirectResponse(f"/jobs/{quote(job_id)}", 303)

    @pages.get("/retry-failed")
    def retry_failed_confirm(request: Request) -> Response:
        who = viewer(request, "admin")
        return render(request, "retry_failed.html", who, failed=gauges.snapshot().counts.get("failed", 0))

    @pages.post("/retry-failed")
    def retry_failed(request: Request, csrf_token: str = Form("")) -> Response:
        viewer(request, "admin", csrf_token)
        client.retry_failed()
        return RedirectResponse("/?state=queued", 303)

    @pages.get("/archives")
    def archives(request: Request, prefix: str = "", cursor: str | None = None) -> Response:
        who = viewer(request)
        found, following = archive_page(client, prefix, cursor, PAGE)
        return render(request, "archives.html", who, archives=found, prefix=prefix, next=following, cursor=cursor)

    @pages.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"next": _safe_next(next), "error": None, "open": auth.open, "who": None}
        )

    @pages.post("/login")
    def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise Problem(403, "a login must come from this site's own form", "csrf")
        session = auth.login(token.strip())
        if session is None:
            context = {"next": _safe_next(next), "error": "That token is not valid.", "open": auth.open, "who": None}
            return templates.TemplateResponse(request, "login.html", context, status_code=401)
        response = RedirectResponse(_safe_next(next), 303)
        response.set_cookie(
            SESSION_COOKIE,
            session[0],
            max_age=auth.session_ttl,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @pages.post("/logout")
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        viewer(request, "job", csrf_token)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return pages


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class _PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status, self.message = status, message


def install(app: Any) -> None:
    """The pages' own answers to "log in first" (a redirect) and "not allowed" (an HTML page)."""

    async def on_redirect(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Redirect)
        return RedirectResponse(exc.location, 303)

    async def on_page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _PageError)
        context = {"who": None, "message": exc.message, "open": False}
        return templates.TemplateResponse(request, "error.html", context, status_code=exc.status)

    app.add_exception_handler(_Redirect, on_redirect)
    app.add_exception_handler(_PageError, on_page_error)


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(target: str) -> str:
    """Only a path on this site: never an absolute or scheme-relative URL (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
