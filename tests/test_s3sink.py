"""The S3 sink under faults on the wire: an abort the store refuses, a CreateMultipartUpload whose answer is lost.

A small proxy (tests/rewrite_proxy.py) sits between bucketzip and the moto server and rewrites one call's answer;
botocore and moto are real. Uploads left open are read with the test's own boto3 client, straight from moto.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from bucketzip.config import Settings
from bucketzip.engine import run_job, run_sync
from bucketzip.errors import SourceMissing, TransientError, UploadFailed
from bucketzip.spec import Location
from bucketzip.stores import SinkOptions, store_for
from tests.helpers import open_uploads
from tests.rewrite_proxy import DROP, Answer, Request, s3_proxy

MiB = 2**20
DENY_ABORT = Answer(403, "AccessDenied", "not allowed: s3:AbortMultipartUpload")


def through(settings: Settings, proxy_url: str) -> Settings:
    return settings.replace(endpoint_url=proxy_url)


def write(settings: Settings, dest: Location, data: bytes, commit: bool = True) -> None:
    async def go() -> None:
        sink = await store_for("s3", settings).open_sink(dest, SinkOptions(part_size=5 * MiB))
        await sink.write(data)
        if commit:
            await sink.commit()
        else:
            await sink.abort()

    run_sync(go())


# --- a failed abort hides nothing ---


class deleted_once_the_upload_exists:
    """Answer the GET of ``path`` with NoSuchKey (deleted after it was listed) once the job's upload exists, and
    refuse every abort (an IAM policy without ``s3:AbortMultipartUpload``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.proxy: Any = None

    def __call__(self, r: Request) -> Answer | None:
        if r.is_("GET") and r.path == self.path:
            deadline = time.monotonic() + 30  # bounds a broken run only
            while self.proxy.count("POST", "uploads", "forwarded") == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            return Answer(404, "NoSuchKey", "The specified key does not exist.")
        return DENY_ABORT if r.is_("DELETE", "uploadId") else None


def test_a_refused_abort_leaves_the_original_error_and_logs_the_upload(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, moto_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="in/a.bin", Body=os.urandom(6 * MiB))  # fills a part: the upload is created
    s3.put_object(Bucket=b, Key="in/b.bin", Body=b"deleted after it was listed")

    rule = deleted_once_the_upload_exists(f"/{b}/in/b.bin")

    uploads: list[str] = []
    spec = {"sources": [f"s3://{b}/in/"], "destination": f"s3://{b}/out.zip"}
    with s3_proxy(moto_url, rule) as (url, proxy), caplog.at_level(logging.WARNING):
        rule.proxy = proxy
        with pytest.raises(SourceMissing) as info:  # not the abort's AccessDenied/UploadFailed
            run_job(spec, through(settings.replace(part_size=5 * MiB), url), on_upload=uploads.append)
    assert info.value.urls == [f"s3://{b}/in/b.bin"]
    assert proxy.count("DELETE", "uploadId", "answered") >= 1
    [upload_id] = uploads
    # The upload is still open (the store refused to abort it), and the log names it for whoever cleans up.
    assert [u["UploadId"] for u in open_uploads(s3, b)] == [upload_id]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(upload_id in w and "SourceMissing" in w for w in warnings), warnings


def test_the_sink_says_which_upload_it_could_not_abort(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, moto_url: str
) -> None:
    b = make_bucket()
    deny = s3_proxy(moto_url, lambda r: DENY_ABORT if r.is_("DELETE", "uploadId") else None)
    with deny as (url, _), pytest.raises(UploadFailed, match="could not be aborted") as info:
        write(through(settings, url), Location("s3", b, "x.zip"), os.urandom(6 * MiB), commit=False)
    [upload] = open_uploads(s3, b)
    assert upload["UploadId"] in str(info.value) and "access denied" in str(info.value)


# --- a CreateMultipartUpload whose answer is lost ---


def drop_first_create(then: Answer | None = None) -> Callable[[Request], Answer | str | None]:
    seen = []

    def rule(r: Request) -> Answer | str | None:
        if r.is_("POST", "uploads"):
            seen.append(r)
            return DROP if len(seen) == 1 else then
        return None

    return rule


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "abort"])
def test_an_upload_whose_create_answer_was_lost_is_aborted(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, moto_url: str, commit: bool
) -> None:
    b = make_bucket()
    data = os.urandom(6 * MiB)
    with s3_proxy(moto_url, drop_first_create()) as (url, proxy):
        write(through(settings, url), Location("s3", b, "x.bin"), data, commit=commit)
    # botocore sent the create again after the lost answer: moto made two uploads, we heard of one.
    assert (proxy.count("POST", "uploads", "dropped"), proxy.count("POST", "uploads", "forwarded")) == (1, 1)
    assert open_uploads(s3, b) == []
    if commit:
        assert s3.get_object(Bucket=b, Key="x.bin")["Body"].read() == data


def test_a_create_that_fails_after_a_lost_answer_leaves_no_upload(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, moto_url: str
) -> None:
    b = make_bucket()
    rule = drop_first_create(then=Answer(501, "NotImplemented", "this store does not do that"))
    with s3_proxy(moto_url, rule) as (url, proxy), pytest.raises(UploadFailed, match="NotImplemented"):
        write(through(settings, url), Location("s3", b, "x.bin"), os.urandom(6 * MiB))
    assert proxy.count("POST", "uploads", "dropped") == 1
    assert open_uploads(s3, b) == []


def test_uploads_on_other_keys_are_left_alone(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, moto_url: str
) -> None:
    b = make_bucket()
    other = s3.create_multipart_upload(Bucket=b, Key="x.bin.other")["UploadId"]  # same prefix, other key
    with s3_proxy(moto_url, drop_first_create()) as (url, _):
        write(through(settings, url), Location("s3", b, "x.bin"), os.urandom(6 * MiB))
    assert [u["UploadId"] for u in open_uploads(s3, b)] == [other]


def test_a_job_cancelled_while_its_create_is_in_flight_leaves_no_upload(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, moto_url: str
) -> None:
    b = make_bucket()
    arrived, release = threading.Event(), threading.Event()

    def hold_create(r: Request) -> None:
        if r.is_("POST", "uploads"):
            arrived.set()
            release.wait(30)
        return None

    async def cancelled_while_creating(s: Settings) -> None:
        sink = await store_for("s3", s).open_sink(Location("s3", b, "x.bin"), SinkOptions(part_size=5 * MiB))
        task = asyncio.ensure_future(sink.write(os.urandom(6 * MiB)))
        while not arrived.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sink.abort()  # what the engine does: the sink has no upload id to abort yet

    with s3_proxy(moto_url, hold_create) as (url, proxy):
        run_sync(cancelled_while_creating(through(settings, url)))
        release.set()
        deadline = time.monotonic() + 30  # bounds a broken run only
        while open_uploads(s3, b) or proxy.count("POST", "uploads", "forwarded") == 0:
            assert time.monotonic() < deadline, "the upload created after the cancellation stayed open"
            time.sleep(0.02)


def test_a_transient_create_failure_is_still_transient(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, moto_url: str
) -> None:
    b = make_bucket()
    drop = s3_proxy(moto_url, lambda r: DROP if r.is_("POST", "uploads") else None)
    with drop as (url, proxy), pytest.raises(TransientError):
        write(through(settings, url), Location("s3", b, "x.bin"), os.urandom(6 * MiB))
    assert proxy.count("POST", "uploads", "dropped") >= 2  # botocore retried it; every try made an upload
    assert open_uploads(s3, b) == []


def test_a_job_whose_abort_is_refused_fails_with_its_own_error_and_the_sweep_aborts_it_later(
    make_bucket: Callable[[], str], s3: Any, moto_url: str, s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    from celery.contrib.testing.worker import start_worker

    import bucketzip.tasks  # noqa: F401  registers the tasks
    from bucketzip.client import Client
    from bucketzip.registry import FAILED, Registry
    from bucketzip.tasks import sweep_uploads
    from bucketzip.worker import make_app
    from tests.conftest import queue_env

    b = make_bucket()
    s3.put_object(Bucket=b, Key="in/a.bin", Body=os.urandom(6 * MiB))
    s3.put_object(Bucket=b, Key="in/b.bin", Body=b"deleted after it was listed")

    rule = deleted_once_the_upload_exists(f"/{b}/in/b.bin")

    with s3_proxy(moto_url, rule) as (url, rule.proxy):
        settings = Settings.from_env(queue_env({**s3_env, "AWS_ENDPOINT_URL_S3": url}, redis_url, queue_prefix))
        app = make_app(settings)
        with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"):
            client = Client(app=app)
            handle = client.submit({"sources": [f"s3://{b}/in/"], "destination": f"s3://{b}/out.zip"})
            with pytest.raises(SourceMissing):  # the job's own error, not the refused abort's
                handle.wait(60)
            job = client.status(handle.id)
        app.close()
    assert (job.state, job.runs, job.error and job.error["type"]) == (FAILED, 1, "SourceMissing")  # not retried
    [upload] = open_uploads(s3, b)
    registry = Registry(settings)
    assert registry.upload_owner(upload["UploadId"]) == handle.id  # recorded: the sweep knows whose it was
    # The sweep (allowed to abort: straight to the store) cleans it up.
    report = sweep_uploads(settings.replace(endpoint_url=moto_url), registry)
    assert report["aborted"] == [f"s3://{b}/out.zip"]
    assert open_uploads(s3, b) == []
