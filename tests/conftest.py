"""Shared fixtures: a real S3 endpoint (moto's server, in its own process), real Redis, clean environment.

A test that needs a server it cannot reach is skipped on a laptop but fails under CI=true (dramatiq's guard).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from bucketzip.config import Settings
from bucketzip.devserver import moto_server, port_open
from tests.faultmatrix import pytest_runtest_logreport, pytest_terminal_summary  # noqa: F401  the matrix's report

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def need(condition: bool, what: str) -> None:
    """Skip when ``what`` is unavailable, except under CI, where a missing service is a failure."""
    if not condition:
        if CI:
            pytest.fail(f"{what} is required under CI=true")
        pytest.skip(f"{what} is not available")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's BUCKETZIP_* or AWS_* settings."""
    for name in list(os.environ):
        if name.startswith(("BUCKETZIP_", "AWS_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url, **CREDENTIALS)


@pytest.fixture
def s3_env(moto_url: str) -> dict[str, str]:
    """Environment for a subprocess (``bucketzip run``, a worker) pointed at the moto server."""
    return {
        "AWS_ENDPOINT_URL_S3": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        # `bucketzip run` records in the catalog when a registry answers: not into the shared Redis's
        # default prefix from a test (tests that check it set their own prefix and "auto").
        "BUCKETZIP_RUN_CATALOG": "off",
    }


@pytest.fixture
def settings(moto_url: str) -> Settings:
    return Settings.from_env(
        {
            "AWS_ENDPOINT_URL_S3": moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "BUCKETZIP_PROGRESS_INTERVAL": "0",
        }
    )


@pytest.fixture
def make_bucket(s3: Any) -> Iterator[Callable[[], str]]:
    """Create uniquely named buckets; empty and delete them (and abort their uploads) after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        s3.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield make
    for name in made:
        for up in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        if s3.get_bucket_versioning(Bucket=name).get("Status"):
            # (moto's ListObjectVersions fails on keys with control characters: only where needed.)
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                for obj in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    s3.delete_object(Bucket=name, Key=obj["Key"], VersionId=obj["VersionId"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=name, Key=obj["Key"])
        s3.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    need(port_open("127.0.0.1", 6379), "Redis at 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


# --- the queue (issue 3): settings isolated per test, our Celery app, an embedded worker, a client ---

QUEUE_ENV = {
    "BUCKETZIP_PROGRESS_INTERVAL": "0.05",
    "BUCKETZIP_LOCK_TTL": "4",
    "BUCKETZIP_MAX_RETRIES": "3",
    "BUCKETZIP_PART_SIZE": "5MiB",
    "BUCKETZIP_JOB_TIME_LIMIT": "120",
    "BUCKETZIP_STALE_UPLOAD_AGE": "121",
}


def queue_env(s3_env: dict[str, str], redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a producer or worker of one test: its own key prefix and queue in the shared Redis."""
    return {
        **s3_env,
        **QUEUE_ENV,
        "BUCKETZIP_REDIS_URL": redis_url,
        "BUCKETZIP_KEY_PREFIX": prefix,
        "BUCKETZIP_QUEUE": prefix,
        **extra,
    }


# An object midway through ``big_corpus``: a job reading the corpus one object at a time has begun its upload by
# the time it asks for it. ``faultproxy.holding`` holds its GET to keep such a job running for as long as a test
# needs, however fast the machine.
MIDWAY = "in/060.bin"


def held_env(s3_env: dict[str, str], redis_url: str, prefix: str, endpoint: str, **extra: str) -> dict[str, str]:
    """``queue_env`` for a job over ``big_corpus`` held at ``MIDWAY``: S3 through the holding proxy's
    ``endpoint``, one object read at a time."""
    return queue_env(s3_env, redis_url, prefix, AWS_ENDPOINT_URL_S3=endpoint, BUCKETZIP_READ_CONCURRENCY="1", **extra)


@pytest.fixture
def queue_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix (and queue name); every key under it is deleted after the test."""
    import redis

    prefix = f"bztest-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


@pytest.fixture
def queue_settings(s3_env: dict[str, str], redis_url: str, queue_prefix: str) -> Settings:
    return Settings.from_env(queue_env(s3_env, redis_url, queue_prefix))


@pytest.fixture
def queue_app(queue_settings: Settings) -> Iterator[Any]:
    import bucketzip.tasks  # noqa: F401  registers the tasks on every app
    from bucketzip.worker import make_app

    app = make_app(queue_settings)
    yield app
    app.close()


@pytest.fixture
def worker(queue_app: Any) -> Iterator[Any]:
    """A real Celery worker on our app, in this process (threads pool, two jobs at a time)."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(queue_app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING") as w:
        yield w


@pytest.fixture
def client(queue_app: Any) -> Iterator[Any]:
    from bucketzip.client import Client

    c = Client(app=queue_app)
    yield c


@pytest.fixture
def put(s3: Any) -> Callable[[str, dict[str, bytes]], None]:
    """Upload ``{key: bytes}`` to a bucket with boto3 (the test's own client, not bucketzip's)."""

    def put(bucket: str, objects: dict[str, bytes]) -> None:
        for key, data in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)

    return put


@pytest.fixture(scope="session")
def big_corpus(s3: Any) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A bucket of 120 incompressible 256 KiB objects under ``in/`` (30 MiB): a job long enough to be
    watched, cancelled or killed halfway. Made once per session; jobs write elsewhere."""
    bucket = f"t-corpus-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    files = {f"in/{i:03d}.bin": os.urandom(256 * 2**10) for i in range(120)}
    for key, data in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    yield bucket, files
    for key in files:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)


# --- Glacier vaults (issue 12): a local vault server (tests/vaultserver.py), boto3's own Glacier client ---


@pytest.fixture
def vaults() -> Iterator[Any]:
    """A fresh local vault server with one vault, ``server.vault``; ``server.url`` is its endpoint."""
    from tests.vaultserver import VaultServer

    server = VaultServer()
    server.start()
    server.vault = f"v-{uuid.uuid4().hex[:8]}"
    server.create_vault(server.vault)
    yield server
    server.stop()


@pytest.fixture
def glacier(vaults: Any) -> Any:
    """boto3's Glacier client on the vault server (the test's own, not bucketzip's)."""
    return boto3.client("glacier", endpoint_url=vaults.url, **CREDENTIALS)


# --- the web app (issue 9): a real uvicorn server on a free port, in a thread of this process ---

WEB_TOKENS = {
    "admin": "admin-token-0123456789abcdef",
    "read": "read-token-0123456789abcdef",
    "submit": "submit-token-0123456789abcdef",
}


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {WEB_TOKENS[role]}"}


@contextlib.contextmanager
def web_server(settings: Settings, app: Any) -> Iterator[str]:
    """Serve ``create_app`` for ``settings`` (with the Celery ``app``) with uvicorn; yield its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    from bucketzip.client import Client
    from bucketzip.web.app import create_app

    web_app = create_app(settings, Client(settings, app=app))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(web_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the web server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        web_app.state.gauges.close()


@pytest.fixture
def web_settings(queue_settings: Settings) -> Settings:
    return queue_settings.replace(api_tokens=tuple(WEB_TOKENS.items()))


@pytest.fixture
def web(web_settings: Settings, queue_app: Any) -> Iterator[str]:
    """The API and dashboard with the three test tokens, on this test's queue prefix; the base URL."""
    with web_server(web_settings, queue_app) as url:
        yield url


@pytest.fixture
def http(web: str) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=web, timeout=30) as client:
        yield client
