"""No presigned URL, session token or password in a log line: ``redact``, and a real worker's INFO log."""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from bucketzip.client import Client
from bucketzip.config import Settings
from bucketzip.devserver import worker_process
from bucketzip.redact import RedactingFilter, redact
from tests.conftest import queue_env

PRESIGNED = (
    "https://s3.example/exports/x.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20260101"
    "%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE%2Ftoken&X-Amz-Signature=0123456789abcdef"
)


def test_redact_masks_what_makes_a_presigned_url_work() -> None:
    clean = redact(f"Task bucketzip.zip[1] succeeded in 2.1s: {{'url': '{PRESIGNED}', 'size': 10}}")
    for secret in ("AKIAEXAMPLE", "FQoGZXIvYXdzEXAMPLE", "0123456789abcdef"):
        assert secret not in clean
    # What is not secret stays readable: where the URL points and how long it lasts.
    assert "https://s3.example/exports/x.zip?" in clean and "X-Amz-Expires=3600" in clean
    assert "X-Amz-Signature=**" in clean and "'size': 10" in clean


def test_redact_masks_sigv2_urls_and_passwords_in_service_urls() -> None:
    assert redact("https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIA1&Signature=abc%3D&Expires=1") == (
        "https://b.s3.amazonaws.com/k?AWSAccessKeyId=**&Signature=**&Expires=1"
    )
    text = "broker amqp://guest:hunter2@rabbit:5672// and redis://:pw@r:6379/0, then s3://bucket/key"
    assert redact(text) == "broker amqp://guest:**@rabbit:5672// and redis://:**@r:6379/0, then s3://bucket/key"


def test_the_filter_rewrites_messages_arguments_celerys_data_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, "test.redact"):
            logger.info("succeeded: %(return_value)s", {"return_value": PRESIGNED}, extra={"data": {"r": PRESIGNED}})
            try:
                raise ValueError(f"bad {PRESIGNED}")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.filters.clear()
    assert "0123456789abcdef" not in caplog.text and "X-Amz-Signature=**" in caplog.text
    assert all("0123456789abcdef" not in str(getattr(r, "data", "")) for r in caplog.records)


def test_a_worker_logs_no_presigned_url_token_or_password(
    s3: Any, make_bucket: Any, s3_env: dict[str, str], queue_prefix: str
) -> None:
    """A real worker process at INFO, temporary credentials, passwords in the broker and Redis URLs, a job with
    a presigned URL in its result: the URL works, and nothing of its secrets (or the passwords) is in the log."""
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    token, broker_password, redis_password = "FQoGZXIvYXdzTESTTOKEN", "brokerpw-9c1e", "redispw-77ab"
    env = queue_env(
        {**s3_env, "AWS_SESSION_TOKEN": token},
        # The shared Redis has no password; its default user takes any, so the URLs can carry one.
        f"redis://default:{redis_password}@127.0.0.1:6379/0",
        queue_prefix,
        BUCKETZIP_BROKER_URL=f"redis://default:{broker_password}@127.0.0.1:6379/0",
    )
    client = Client(Settings.from_env(env))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "worker.log"
        with log_path.open("wb") as log, worker_process(env, f"redact-{queue_prefix}", log):
            spec = {"sources": [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/a.zip", "presign_expires": 600}
            result = client.submit(spec).wait(120)
        text = log_path.read_text(errors="replace")
    client.close()
    url = result["url"]
    assert "X-Amz-Security-Token=" in url and "X-Amz-Signature=" in url  # the secrets exist...
    signature = url.rsplit("X-Amz-Signature=", 1)[1].split("&")[0]
    assert "succeeded in" in text, text[-3000:]  # ...and the line that used to carry them was written
    for secret in (signature, token, broker_password, redis_password):
        assert secret not in text, f"{secret!r} is in the worker's log"


def test_the_demo_prints_no_broker_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    spec = importlib.util.spec_from_file_location("bucketzip_demo", path)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    monkeypatch.setenv("BUCKETZIP_BROKER_URL", "amqp://demo:hunter2@rabbit:5672//")
    with demo.queue_services(embedded=False):
        pass
    err = capsys.readouterr().err
    assert "amqp://demo:**@rabbit:5672//" in err and "hunter2" not in err
    assert os.environ.get("BUCKETZIP_BROKER_URL") == "amqp://demo:hunter2@rabbit:5672//"  # only the output changed
