"""Shared fixtures: a real S3 endpoint (moto's server, in its own process), real Redis, clean environment.

A test that needs a server it cannot reach is skipped on a laptop but fails under CI=true (dramatiq's guard).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from bucketzip.config import Settings
from bucketzip.devserver import moto_server, port_open

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
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=name, Key=obj["Key"])
        s3.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    need(port_open("127.0.0.1", 6379), "Redis at 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"
