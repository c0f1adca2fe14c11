"""The ASGI app: the JSON API under /v1, the dashboard, /healthz, /readyz, /metrics and /docs.

``create_app()`` builds it from the environment (``uvicorn --factory bucketzip.web.app:create_app``);
``serve()`` is ``bucketzip serve``, which also refuses to listen beyond loopback when no tokens are set.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..client import Client
from ..config import Settings
from ..errors import ConfigError
from . import api, pages, problems
from .auth import Auth
from .live import Gauges, readiness
from .metrics import CONTENT_TYPE, exposition

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
READY_TIMEOUT = 3.0  # seconds each readiness probe may take
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")  # Swagger UI sets inline styles

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: Settings) -> None:
    """``bucketzip serve`` refuses to expose an API without tokens beyond this machine."""
    if not settings.api_tokens and not is_loopback(host):
        raise ConfigError(
            "--host",
            host,
            "no BUCKETZIP_API_TOKENS are configured, so the server binds only to loopback (127.0.0.1, ::1); "
            "set tokens (ROLE:TOKEN,...) to listen on other addresses",
        )


class Guard:
    """Pure ASGI middleware: the request body limit (413), the loopback rule of an open server, and the
    security headers on every answer."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.limit, self.open = app, settings.api_max_body, not settings.api_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.open and not self._local(scope, headers):
            detail = "no BUCKETZIP_API_TOKENS are configured: only loopback clients, at loopback names, are answered"
            await problems.response(403, detail, "loopback-only", path)(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge()
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", (DOCS_CSP if path == "/docs" else CSP).encode()),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _TooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is larger than {self.limit} bytes (BUCKETZIP_API_MAX_BODY)"
        await problems.response(413, detail, "too-large", scope.get("path"), limit=self.limit)(scope, receive, send)

    @staticmethod
    def _local(scope: Scope, headers: dict[str, str]) -> bool:
        client = scope.get("client")
        if client and not is_loopback(client[0]):
            return False
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return not host or name.lower() in LOOPBACK_NAMES or is_loopback(name)


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None, client: Client | None = None, ping_workers: bool = True) -> FastAPI:
    """The app, from ``settings`` (default: the environment) and a ``Client`` (default: one of those)."""
    settings = settings or (client.settings if client is not None else Settings.from_env())
    client = client or Client(settings)
    gauges = Gauges(client, ping=ping_workers)
    auth = Auth(settings, _open_secret(client))

    app = FastAPI(
        title="bucketzip",
        version=__version__,
        summary="Zip many S3 objects into one archive in S3, as a queue service.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.client, app.state.auth, app.state.gauges = client, auth, gauges
    problems.install(app)
    pages.install(app)
    app.include_router(api.router(client, auth, gauges))
    app.include_router(pages.router(client, auth, gauges))
    app.mount("/static/swagger", StaticFiles(packages=[("fastapi_offline", "static")]), name="swagger")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/healthz", tags=["monitoring"])
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["monitoring"], responses={503: {"description": "a service does not answer"}})
    def readyz(request: Request) -> JSONResponse:
        """Whether the broker, the result backend, the registry and S3 answer, each within a few seconds.
        The errors are shown to callers with the read role only."""
        report = readiness(client, READY_TIMEOUT)
        ok = all(error is None for error in report.values())
        try:
            who = auth.authenticate(request)
        except problems.Problem:
            who = None
        detailed = who is not None and who.can("read")
        checks = {name: ("ok" if error is None else (error if detailed else "fail")) for name, error in report.items()}
        return JSONResponse({"status": "ok" if ok else "fail", "checks": checks}, 200 if ok else 503)

    @app.get("/metrics", tags=["monitoring"], response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus text: jobs by state, runs started, jobs finished by outcome, bytes in and out, job
        durations, queue depth, running jobs, workers online, uploads swept."""
        auth.require(request, "read")
        return Response(exposition(client, gauges), media_type=CONTENT_TYPE)

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        return pages.templates.TemplateResponse(request, "docs.html", {})

    app.add_middleware(Guard, settings=settings)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(settings.api_cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location"],
            allow_credentials=False,  # tokens travel in the Authorization header, never in cookies, cross-site
        )
    return app


def _open_secret(client: Client) -> Callable[[], bytes]:
    """The CSRF key of an open server: random, made once in Redis, so every process of it agrees."""
    cache: list[bytes] = []

    def get() -> bytes:
        if not cache:
            key = client.registry.key("web", "csrf-secret")
            client.registry.redis.set(key, secrets.token_hex(32), nx=True)
            cache.append(client.registry.redis.get(key).encode())
        return cache[0]

    return get


def serve(host: str, port: int, settings: Settings | None = None, log_level: str = "info") -> None:
    """Run the app with uvicorn (``bucketzip serve``)."""
    import uvicorn

    settings = settings or Settings.from_env()
    check_bind(host, settings)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, proxy_headers=True)
