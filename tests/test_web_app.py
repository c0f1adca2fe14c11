"""The app's shell: binding rules, the open (no tokens) mode's loopback guard, the body limit, CORS, headers,
settings, and what the web process imports."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from bucketzip.config import Settings
from bucketzip.errors import ConfigError
from bucketzip.web.app import check_bind, is_loopback
from tests.conftest import WEB_TOKENS, bearer, queue_env, web_server

SPEC = {"sources": ["s3://bkt-app/a"], "destination": "s3://bkt-app/a.zip"}


def test_tokens_are_parsed_validated_and_never_shown() -> None:
    s = Settings.from_env({"BUCKETZIP_API_TOKENS": f"admin:{'a' * 16}, read:{'r' * 20}"})
    assert s.api_tokens == (("admin", "a" * 16), ("read", "r" * 20))
    assert "aaaa" not in repr(s)
    for bad, reason in [
        (f"root:{'a' * 16}", "ROLE one of submit, read, admin"),
        ("admin:short-secret", "at least 16 characters"),
        (f"admin:{'a' * 16},read:{'a' * 16}", "listed twice"),
        ("a" * 20, "must be ROLE:TOKEN"),
    ]:
        with pytest.raises(ConfigError, match=reason) as caught:
            Settings.from_env({"BUCKETZIP_API_TOKENS": bad})
        assert "a" * 16 not in str(caught.value) and "short-secret" not in str(caught.value)
    with pytest.raises(ConfigError, match="BUCKETZIP_API_CORS_ORIGINS"):
        Settings.from_env({"BUCKETZIP_API_CORS_ORIGINS": "app.example"})
    assert Settings.from_env({"BUCKETZIP_API_MAX_BODY": "2MiB"}).api_max_body == 2 * 2**20


def test_without_tokens_serve_refuses_to_bind_beyond_loopback() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, Settings())
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ConfigError, match="BUCKETZIP_API_TOKENS"):
            check_bind(host, Settings())
        check_bind(host, Settings(api_tokens=(("admin", "a" * 16),)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKETZIP_")}
    out = subprocess.run(
        [sys.executable, "-m", "bucketzip", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("bucketzip: error: setting --host='0.0.0.0': no BUCKETZIP_API_TOKENS")


def test_an_open_server_answers_only_loopback_names(queue_settings: Settings, queue_app: Any) -> None:
    with web_server(queue_settings, queue_app) as url, httpx.Client(base_url=url) as http:
        # no tokens: open to this machine, as admin; curl-like clients need no CSRF token
        r = http.post("/v1/jobs", json=SPEC)
        assert r.status_code == 202, r.text
        assert http.get("/", follow_redirects=False).status_code == 200
        assert http.get("/v1/jobs", headers={"host": "localhost:8080"}).status_code == 200
        # a page elsewhere that resolves its own name to 127.0.0.1 (DNS rebinding) is refused
        rebound = http.get("/v1/jobs", headers={"host": "evil.example"})
        assert rebound.status_code == 403 and "BUCKETZIP_API_TOKENS" in rebound.json()["detail"]
        # a browser posting from another site (it sends Origin) without the page's CSRF token is refused
        forged = http.post("/v1/jobs", json=SPEC, headers={"origin": "https://evil.example"})
        assert forged.status_code == 403 and forged.json()["type"].endswith("csrf")
        page = http.get("/retry-failed").text
        csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        same = http.post("/v1/jobs", json=SPEC, headers={"origin": url, "x-csrf-token": csrf})
        assert same.status_code == 202


def test_request_bodies_over_the_limit_are_refused(
    s3_env: dict[str, str], redis_url: str, queue_prefix: str, queue_app: Any
) -> None:
    settings = Settings.from_env(queue_env(s3_env, redis_url, queue_prefix, BUCKETZIP_API_MAX_BODY="4KiB")).replace(
        api_tokens=tuple(WEB_TOKENS.items())
    )
    big = {**SPEC, "metadata": {"pad": "x" * 5000}}
    with web_server(settings, queue_app) as url, httpx.Client(base_url=url) as http:
        r = http.post("/v1/jobs", json=big, headers=bearer("submit"))
        assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["limit"] == 4096 and "BUCKETZIP_API_MAX_BODY" in r.json()["detail"]

        def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 1000

        r = http.post(
            "/v1/jobs/batch", content=chunks(), headers={**bearer("submit"), "content-type": "application/json"}
        )
        assert r.status_code == 413
        assert http.get("/v1/jobs", headers=bearer("read")).json()["jobs"] == []
        assert http.post("/v1/jobs", json=SPEC, headers=bearer("submit")).status_code == 202


def test_cors_is_off_unless_origins_are_named(web_settings: Settings, queue_app: Any, http: httpx.Client) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in http.options("/v1/jobs", headers=preflight).headers
    assert "access-control-allow-origin" not in http.get("/healthz", headers={"origin": "https://app.example"}).headers
    settings = web_settings.replace(api_cors_origins=frozenset({"https://app.example"}))
    with web_server(settings, queue_app) as url, httpx.Client(base_url=url) as other:
        r = other.options("/v1/jobs", headers={**preflight, "access-control-request-headers": "authorization"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-credentials" not in r.headers
        r = other.options("/v1/jobs", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_pages_carry_security_headers(http: httpx.Client) -> None:
    r = http.get("/login")
    assert r.status_code == 200
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    js = http.get("/static/app.js")
    assert js.status_code == 200 and "data-live" in js.text


def test_the_web_app_loads_neither_s3fs_boto3_nor_the_zip_writer(
    s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    code = """
import sys
import httpx
import bucketzip.web.app as w

async def main():
    transport = httpx.ASGITransport(app=w.create_app(ping_workers=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        r = await c.post("/v1/jobs", json={"sources": ["s3://bkt/a"], "destination": "s3://bkt/a.zip"})
        assert r.status_code == 202, r.text
        for path in ("/", "/metrics", "/readyz", "/v1/jobs", "/v1/archives"):
            r = await c.get(path)
            assert r.status_code in (200, 503), (path, r.status_code)

import asyncio
asyncio.run(main())
heavy = [m for m in ("s3fs", "boto3", "botocore", "aiobotocore", "bucketzip.archive", "bucketzip.engine",
                     "bucketzip.stores") if m in sys.modules]
assert not heavy, heavy
print("light")
"""
    env = {**os.environ, **queue_env(s3_env, redis_url, queue_prefix)}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "light"
