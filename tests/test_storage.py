"""Storage: error translation (real botocore exceptions), and the S3 and local stores against real endpoints.

The stores are driven through the same interface the engine uses: head, list, read, open_sink -> write,
commit, abort. Objects are checked with the test's own boto3 client.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from bucketzip.config import Settings
from bucketzip.devserver import moto_server
from bucketzip.engine import run_sync
from bucketzip.errors import (
    AccessDenied,
    CredentialsError,
    LeaseLost,
    SourceChanged,
    SourceMissing,
    SourceUnreadable,
    TransientError,
    UploadFailed,
)
from bucketzip.spec import Location
from bucketzip.stores import ObjectInfo, Published, SinkOptions, error_code, store_for, translate
from tests.conftest import CREDENTIALS
from tests.helpers import keys, open_uploads

MiB = 2**20
URL = "s3://photos/a.jpg"


def client_error(code: str, message: str = "", status: int = 400, operation: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


# --- translate: the one boundary where third-party errors become ours ---


@pytest.mark.parametrize(
    ("code", "operation", "kind"),
    [
        ("NoSuchKey", "read", SourceMissing),
        ("404", "read", SourceMissing),
        ("NoSuchBucket", "read", SourceMissing),
        ("NoSuchBucket", "write", UploadFailed),  # a destination bucket that is not there: permanent, ours
        ("AccessDenied", "read", AccessDenied),
        ("AccessDenied", "write", AccessDenied),
        ("403", "read", AccessDenied),
        ("InvalidAccessKeyId", "read", CredentialsError),  # wrong credentials say so (an AccessDenied too)
        ("SignatureDoesNotMatch", "write", CredentialsError),
        ("PreconditionFailed", "read", SourceChanged),  # If-Match failed: overwritten since it was listed
        ("412", "read", SourceChanged),
        ("SlowDown", "read", TransientError),
        ("SlowDown", "write", TransientError),
        ("503", "write", TransientError),
        ("ServiceUnavailable", "read", TransientError),
        ("InternalError", "write", TransientError),
        ("RequestTimeout", "write", TransientError),
        ("EntityTooSmall", "write", UploadFailed),
        ("InvalidObjectState", "read", SourceUnreadable),  # archived in GLACIER: restore it first
    ],
)
def test_client_errors(code: str, operation: str, kind: type[Exception]) -> None:
    exc = translate(client_error(code, "the message"), URL, operation)
    assert type(exc) is kind
    assert URL in str(exc)
    if kind in (AccessDenied, CredentialsError):
        assert isinstance(exc, AccessDenied) and exc.operation == operation
    if kind is SourceMissing:
        assert isinstance(exc, SourceMissing) and exc.urls == [URL]
    if kind in (TransientError, UploadFailed) and code != "NoSuchBucket":
        assert code in str(exc)  # the S3 code is kept for whoever reads the log


@pytest.mark.parametrize(("status", "kind"), [(403, SourceUnreadable), (409, SourceUnreadable), (500, TransientError)])
def test_unknown_read_errors_are_judged_by_http_status(status: int, kind: type[Exception]) -> None:
    # A permanent client error must not be retried as if it were transient.
    assert type(translate(client_error("SomethingNew", status=status), URL, "read")) is kind


def test_no_such_bucket_on_write_says_so() -> None:
    exc = translate(client_error("NoSuchBucket", operation="PutObject"), URL, "write")
    assert isinstance(exc, UploadFailed) and "bucket does not exist" in str(exc)


@pytest.mark.parametrize(
    ("raised", "operation", "kind"),
    [
        (FileNotFoundError(2, "No such file"), "read", SourceMissing),
        (FileNotFoundError(2, "No such file"), "write", UploadFailed),
        (PermissionError(13, "Permission denied"), "read", AccessDenied),
        (ConnectionResetError(104, "reset"), "read", TransientError),
        (TimeoutError("timed out"), "write", TransientError),
        (EndpointConnectionError(endpoint_url="http://s3.example"), "read", TransientError),
        (ReadTimeoutError(endpoint_url="http://s3.example"), "read", TransientError),
        (ConnectTimeoutError(endpoint_url="http://s3.example"), "write", TransientError),
    ],
)
def test_other_errors(raised: Exception, operation: str, kind: type[Exception]) -> None:
    assert type(translate(raised, URL, operation)) is kind


def test_ours_and_unknown_errors_pass_through() -> None:
    ours = SourceChanged(URL, "x")
    assert translate(ours, URL, "read") is ours
    cancelled = asyncio.CancelledError()
    assert translate(cancelled, URL, "read") is cancelled
    bug = KeyError("not an S3 error")
    assert translate(bug, URL, "read") is bug  # a bug in our code must not be disguised as an S3 failure


def test_error_code() -> None:
    assert error_code(client_error("SlowDown")) == "SlowDown"
    assert error_code(ValueError("x")) is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-21T15:04:05.000Z",  # a listing's LastModified (XML)
        "2026-11-21T15:04:05Z",
        "2026-11-21T16:04:05.250+01:00",
        "Sat, 21 Nov 2026 15:04:05 GMT",  # a GET's or HEAD's Last-Modified header
        "Saturday, 21-Nov-26 15:04:05 GMT",  # RFC 850: the fallback parses it
        "Sat, 21 Nov 2026 15:04:05 -0000",  # RFC 2822's "zone unknown": the fallback makes it UTC
        "1795359845",  # epoch seconds
        "2026-11-21T15:04:05",  # no zone: naive, as botocore's
    ],
)
def test_timestamps_parse_like_botocore(text: str) -> None:
    from botocore.utils import parse_timestamp

    from bucketzip.stores.s3 import _timestamp

    ours, theirs = _timestamp(text), parse_timestamp(text)
    assert (ours.utcoffset(), ours.replace(tzinfo=None)) == (theirs.utcoffset(), theirs.replace(tzinfo=None))


# --- the S3 store against moto ---


async def _collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in chunks]


def read_all(settings: Settings, obj: ObjectInfo, chunk_size: int) -> list[bytes]:
    return run_sync(_collect(store_for("s3", settings).read(obj, chunk_size)))


def head(settings: Settings, bucket: str, key: str) -> ObjectInfo | None:
    return run_sync(store_for("s3", settings).head(Location("s3", bucket, key)))


def test_head_and_read(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    data = os.urandom(MiB + 12345)
    s3.put_object(Bucket=b, Key="x/data.bin", Body=data)
    assert head(settings, b, "x/missing.bin") is None
    obj = head(settings, b, "x/data.bin")
    assert obj is not None and obj.size == len(data)
    chunks = read_all(settings, obj, 256 * 1024)
    assert b"".join(chunks) == data
    assert {len(c) for c in chunks[:-1]} == {256 * 1024}  # whole chunks, only the last one short


def test_read_of_an_overwritten_object_fails(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="k", Body=b"first version")
    obj = head(settings, b, "k")
    assert obj is not None
    s3.put_object(Bucket=b, Key="k", Body=b"second version")  # same size, other bytes
    with pytest.raises(SourceChanged) as info:
        read_all(settings, obj, 65536)
    assert info.value.url == f"s3://{b}/k"


def test_read_of_a_deleted_object_fails(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="k", Body=b"data")
    obj = head(settings, b, "k")
    assert obj is not None
    s3.delete_object(Bucket=b, Key="k")
    with pytest.raises(SourceMissing) as info:
        read_all(settings, obj, 65536)
    assert info.value.urls == [f"s3://{b}/k"]


def test_read_shorter_than_listed_fails(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="k", Body=b"data")
    obj = head(settings, b, "k")
    assert obj is not None
    wrong = ObjectInfo(obj.location, obj.size + 1, obj.modified, obj.etag)
    with pytest.raises(SourceChanged, match="read 4 bytes"):
        read_all(settings, wrong, 65536)


def test_read_of_an_archived_glacier_object_is_permanent(
    make_bucket: Callable[[], str], s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="cold", Body=b"data", StorageClass="GLACIER")
    obj = head(settings, b, "cold")
    assert obj is not None
    with pytest.raises(SourceUnreadable, match="restore it"):  # not a TransientError: retrying won't help
        read_all(settings, obj, 65536)


def write_through_sink(
    settings: Settings, dest: Location, pieces: list[bytes], options: SinkOptions, commit: bool = True
) -> Published | None:
    async def go() -> Published | None:
        sink = await store_for(dest.protocol, settings).open_sink(dest, options)
        for piece in pieces:
            await sink.write(piece)
        if commit:
            return await sink.commit()
        await sink.abort()
        return None

    return run_sync(go())


def test_small_archive_is_one_put(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    uploads: list[str] = []
    options = SinkOptions(
        part_size=5 * MiB,
        metadata={"owner": "u42"},
        content_disposition='attachment; filename="x.zip"',
        storage_class="STANDARD_IA",
        on_upload=uploads.append,
    )
    published = write_through_sink(settings, Location("s3", b, "out/x.zip"), [b"abc", b"def"], options)
    assert uploads == [], "no multipart upload for an archive smaller than a part"
    assert published is not None and (published.size, published.parts) == (6, 1)
    h = s3.head_object(Bucket=b, Key="out/x.zip")
    assert h["ETag"] == published.etag
    assert (h["ContentType"], h["Metadata"], h["ContentDisposition"], h["StorageClass"]) == (
        "application/zip",
        {"owner": "u42"},
        'attachment; filename="x.zip"',
        "STANDARD_IA",
    )
    assert s3.get_object(Bucket=b, Key="out/x.zip")["Body"].read() == b"abcdef"


def test_multipart_parts_are_equal_and_published_only_on_commit(
    make_bucket: Callable[[], str], s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    data = os.urandom(12 * MiB + 777)
    pieces = [data[i : i + 700_001] for i in range(0, len(data), 700_001)]  # not aligned to the part size
    seen: dict[str, Any] = {}

    async def go() -> Published:
        dest = Location("s3", b, "big.zip")
        options = SinkOptions(part_size=5 * MiB, metadata={"a": "b"}, on_upload=lambda u: seen.setdefault("id", u))
        sink = await store_for("s3", settings).open_sink(dest, options)
        for piece in pieces:
            await sink.write(piece)
        seen["uploads"] = await asyncio.to_thread(open_uploads, s3, b)
        seen["keys"] = await asyncio.to_thread(keys, s3, b)
        return await sink.commit()

    published = run_sync(go())
    assert [u["UploadId"] for u in seen["uploads"]] == [seen["id"]]
    assert seen["keys"] == [], "nothing is visible before commit"
    assert (published.size, published.parts) == (len(data), 3)
    sizes = [s3.head_object(Bucket=b, Key="big.zip", PartNumber=n)["ContentLength"] for n in (1, 2, 3)]
    assert sizes == [5 * MiB, 5 * MiB, 2 * MiB + 777]
    h = s3.head_object(Bucket=b, Key="big.zip")
    assert (h["ContentLength"], h["ETag"], h["Metadata"]) == (len(data), published.etag, {"a": "b"})
    assert s3.get_object(Bucket=b, Key="big.zip")["Body"].read() == data
    assert open_uploads(s3, b) == []


def test_abort_leaves_nothing(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    uploads: list[str] = []
    options = SinkOptions(part_size=5 * MiB, on_upload=uploads.append)
    write_through_sink(settings, Location("s3", b, "x.zip"), [os.urandom(MiB)] * 11, options, commit=False)
    assert len(uploads) == 1, "parts were uploaded before the abort"
    assert keys(s3, b) == [] and open_uploads(s3, b) == []
    # Abort before any part: nothing was ever created.
    write_through_sink(settings, Location("s3", b, "y.zip"), [b"small"], SinkOptions(), commit=False)
    assert keys(s3, b) == [] and open_uploads(s3, b) == []


def test_a_sink_told_of_a_big_archive_creates_its_upload_before_the_first_part(
    make_bucket: Callable[[], str], s3: Any, settings: Settings
) -> None:
    """CreateMultipartUpload overlaps the first reads: it is sent as the sink opens, not when part 1 is full."""
    b = make_bucket()
    data = os.urandom(6 * MiB)
    seen: dict[str, Any] = {}

    async def go(hint: int, pieces: list[bytes]) -> Published:
        options = SinkOptions(part_size=5 * MiB, size_hint=hint, on_upload=lambda u: seen.setdefault("id", u))
        sink = await store_for("s3", settings).open_sink(Location("s3", b, "big.zip"), options)
        deadline = time.monotonic() + 10
        while not (uploads := await asyncio.to_thread(open_uploads, s3, b)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # nothing written yet: the create is on its way on the sink's pool
        seen["before_writes"] = uploads
        for piece in pieces:
            await sink.write(piece)
        return await sink.commit()

    published = run_sync(go(10 * MiB, [data[: 3 * MiB], data[3 * MiB :]]))
    assert [u["UploadId"] for u in seen["before_writes"]] == [seen["id"]]
    assert (published.size, published.parts) == (len(data), 2)
    assert s3.get_object(Bucket=b, Key="big.zip")["Body"].read() == data
    assert open_uploads(s3, b) == []
    # The hint was too big (a well-compressed input): one small part still makes the whole archive.
    seen.clear()
    published = run_sync(go(10 * MiB, [b"tiny"]))
    assert published.parts == 1 and s3.get_object(Bucket=b, Key="big.zip")["Body"].read() == b"tiny"
    assert open_uploads(s3, b) == []


def test_an_early_upload_is_aborted_with_the_sink(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    uploads: list[str] = []
    options = SinkOptions(part_size=5 * MiB, size_hint=100 * MiB, on_upload=uploads.append)
    write_through_sink(settings, Location("s3", b, "x.zip"), [], options, commit=False)  # aborted at once
    assert len(uploads) == 1, "the upload was created before anything was written"
    assert keys(s3, b) == [] and open_uploads(s3, b) == []
    # A hint below two parts leaves the archive to a single PUT, as without one.
    options = SinkOptions(part_size=5 * MiB, size_hint=9 * MiB, on_upload=uploads.append)
    write_through_sink(settings, Location("s3", b, "y.zip"), [b"abc"], options)
    assert len(uploads) == 1 and keys(s3, b) == ["y.zip"]


def test_closed_sink_refuses_writes(make_bucket: Callable[[], str], settings: Settings) -> None:
    b = make_bucket()

    async def go() -> None:
        sink = await store_for("s3", settings).open_sink(Location("s3", b, "x.zip"), SinkOptions())
        await sink.write(b"x")
        await sink.commit()
        with pytest.raises(RuntimeError):
            await sink.write(b"more")

    run_sync(go())


@pytest.mark.parametrize("size", [10, 6 * MiB], ids=["put", "multipart"])
def test_missing_destination_bucket(settings: Settings, size: int) -> None:
    dest = Location("s3", "no-such-bucket-bucketzip", "x.zip")
    with pytest.raises(UploadFailed) as info:
        write_through_sink(settings, dest, [bytes(size)], SinkOptions(part_size=5 * MiB))
    assert info.value.url == dest.url and "bucket does not exist" in str(info.value)


def test_presigned_url_serves_the_object(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="dir/x.zip", Body=b"zip bytes")
    url = run_sync(store_for("s3", settings).presign(Location("s3", b, "dir/x.zip"), None, 60))
    assert url is not None and "X-Amz-Signature" in url and "X-Amz-Expires=60" in url
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == b"zip bytes"


def test_presigned_url_under_temporary_credentials_lasts_no_longer_than_they_may(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="x.zip", Body=b"zip bytes")
    loc, day = Location("s3", b, "x.zip"), 24 * 3600
    assert f"X-Amz-Expires={day}" in run_sync(store_for("s3", settings).presign(loc, None, day))
    temporary = settings.replace(session_token="FQoGZXIvYXdzEXAMPLETOKEN", presign_expires_temporary=900)
    with caplog.at_level("WARNING"):
        url = run_sync(store_for("s3", temporary).presign(loc, None, day))
    assert "X-Amz-Security-Token=" in url and "X-Amz-Expires=900" in url  # dies with the token: says so
    assert "lasts 900 s, not the 86400 s asked" in caplog.text and "X-Amz-Signature" not in caplog.text
    assert "X-Amz-Expires=600" in run_sync(store_for("s3", temporary).presign(loc, None, 600))  # shorter: kept


def test_one_store_per_protocol_and_settings(settings: Settings) -> None:
    assert store_for("s3", settings) is store_for("s3", settings)
    assert store_for("s3", settings) is not store_for("s3", settings.replace(read_concurrency=2))
    assert store_for("file", settings) is not store_for("s3", settings)


# --- real denied access: a second moto server that enforces credentials ---


@pytest.fixture(scope="module")
def strict_s3(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A moto server that lets its first two requests through (to make a bucket and an object) and then
    checks credentials against its IAM, where none exist."""
    monkeypatch_module.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "2")
    with moto_server() as url:
        s3 = boto3.client("s3", endpoint_url=url, **CREDENTIALS)
        s3.create_bucket(Bucket="locked")
        s3.put_object(Bucket="locked", Key="secret.txt", Body=b"secret")
        yield url, "locked"


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_denied_access_end_to_end(strict_s3: tuple[str, str]) -> None:
    url, bucket = strict_s3
    settings = Settings.from_env(
        {
            "AWS_ENDPOINT_URL_S3": url,
            "AWS_ACCESS_KEY_ID": "nobody",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_REGION": "us-east-1",
        }
    )
    with pytest.raises(AccessDenied) as info:
        head(settings, bucket, "secret.txt")
    assert (info.value.url, info.value.operation) == (f"s3://{bucket}/secret.txt", "read")
    # The real cause, though a HEAD's 403 has no body to say it: the key is not one the endpoint knows.
    assert type(info.value) is CredentialsError
    assert "the access key id is not known to the endpoint (InvalidAccessKeyId)" in str(info.value)
    with pytest.raises(AccessDenied) as info:
        write_through_sink(settings, Location("s3", bucket, "out.zip"), [b"x"], SinkOptions())
    assert (info.value.url, info.value.operation) == (f"s3://{bucket}/out.zip", "write")


# --- the local store (fsspec), for local use and the ZIP64 tests ---


def test_local_sink_is_transactional(tmp_path: Path) -> None:
    local = Settings.from_env({}, allowed_protocols=frozenset({"s3", "file"}))
    dest = Location("file", "", f"{tmp_path}/out.zip")
    seen: dict[str, list[str]] = {}

    async def go(commit: bool) -> None:
        sink = await store_for("file", local).open_sink(dest, SinkOptions())
        await sink.write(b"part one, ")
        seen["during"] = sorted(os.listdir(tmp_path))
        await sink.write(b"part two")
        await (sink.commit() if commit else sink.abort())

    run_sync(go(commit=False))
    assert not (tmp_path / "out.zip").exists()
    assert os.listdir(tmp_path) == [], "the temporary file is removed on abort"
    assert "out.zip" not in seen["during"]
    run_sync(go(commit=True))
    assert os.listdir(tmp_path) == ["out.zip"]
    assert (tmp_path / "out.zip").read_bytes() == b"part one, part two"


def test_local_store_reads_and_lists(tmp_path: Path) -> None:
    local = Settings.from_env({}, allowed_protocols=frozenset({"s3", "file"}))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"a" * 200_000)
    (tmp_path / "d" / "b.bin").write_bytes(b"")
    store = store_for("file", local)

    async def go() -> tuple[list[ObjectInfo], list[bytes], ObjectInfo | None]:
        listed = [o async for o in store.list(Location("file", "", f"{tmp_path}/d/"))]
        chunks = [c async for c in store.read(listed[0], 65536)]
        return listed, chunks, await store.head(Location("file", "", f"{tmp_path}/d/nope"))

    listed, chunks, missing = run_sync(go())
    assert [(o.location.path, o.size) for o in listed] == [(f"{tmp_path}/d/a.bin", 200_000), (f"{tmp_path}/d/b.bin", 0)]
    assert b"".join(chunks) == b"a" * 200_000 and len(chunks) == 4
    assert missing is None


# --- publication: tagged, conditional, and resolved against the destination when the store forgets ---


def publish(settings: Settings, dest: Location, data: bytes, options: SinkOptions) -> Published:
    async def go() -> Published:
        sink = await store_for("s3", settings).open_sink(dest, options)
        try:
            await sink.write(data)
            return await sink.commit()
        except BaseException:
            await sink.abort()
            raise

    return run_sync(go())


@pytest.mark.parametrize("size", [100, 6 * MiB], ids=["single PUT", "multipart"])
def test_a_conditional_commit_that_finds_its_own_archive_is_a_success(
    make_bucket: Callable[[], str], s3: Any, settings: Settings, size: int
) -> None:
    """As after a lost answer: the store says the precondition failed (or the upload is gone), and the
    destination holds this very run's archive. That is a publication, not a failure."""
    b = make_bucket()
    dest = Location("s3", b, "out.zip")
    data = os.urandom(size)
    tagged = SinkOptions(part_size=5 * MiB, tag=("job-1", "run-a"))
    first = publish(settings, dest, data, tagged)
    again = publish(settings, dest, data, SinkOptions(part_size=5 * MiB, tag=("job-1", "run-a"), if_none_match=True))
    assert again.etag == first.etag and again.size == size
    head = s3.head_object(Bucket=b, Key="out.zip")
    assert head["Metadata"] == {"bucketzip-job": "job-1", "bucketzip-run": "run-a"}
    assert open_uploads(s3, b) == []


def test_another_run_of_the_same_job_published_first(
    make_bucket: Callable[[], str], s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    dest = Location("s3", b, "out.zip")
    publish(settings, dest, b"first", SinkOptions(tag=("job-1", "run-a")))
    with pytest.raises(LeaseLost):
        publish(settings, dest, b"second", SinkOptions(tag=("job-1", "run-b"), if_none_match=True))
    assert s3.get_object(Bucket=b, Key="out.zip")["Body"].read() == b"first"  # published once
    assert open_uploads(s3, b) == []


def test_a_destination_written_by_someone_else_meanwhile_fails_the_job(
    make_bucket: Callable[[], str], s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    dest = Location("s3", b, "out.zip")
    s3.put_object(Bucket=b, Key="out.zip", Body=b"theirs")
    with pytest.raises(UploadFailed, match="written by someone else"):
        publish(settings, dest, os.urandom(6 * MiB), SinkOptions(part_size=5 * MiB, tag=("j", "r"), if_none_match=True))
    assert s3.get_object(Bucket=b, Key="out.zip")["Body"].read() == b"theirs"
    assert open_uploads(s3, b) == []


def test_head_reports_user_metadata(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="k", Body=b"x", Metadata={"Bucketzip-Job": "j1"})
    info = run_sync(store_for("s3", settings).head(Location("s3", b, "k")))
    assert info is not None and info.metadata == {"bucketzip-job": "j1"}


def test_the_two_s3_clients_share_one_parse_of_the_s3_model(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reads' client (aiobotocore) and the parts' (boto3) are made at once, on two threads: each used to
    parse the S3 model itself (~150 ms of CPU in a job's start). One parse now, cached in the shared loader."""
    import botocore.loaders

    from bucketzip import stores
    from bucketzip.stores.s3 import S3Store

    for earlier in list(stores._stores.values()):  # stores of earlier tests may still be making their clients
        if isinstance(earlier, S3Store):
            earlier.boto()
    parsed: list[str] = []
    load = botocore.loaders.Loader.load_data_with_path

    def counting(self: Any, name: str) -> Any:
        parsed.append(name)
        return load(self, name)

    monkeypatch.setattr(botocore.loaders.Loader, "load_data_with_path", counting)
    store = S3Store(settings)
    run_sync(store.client("b"))  # at once, while the pool makes the boto3 client
    store.boto()
    assert parsed.count("s3/2006-03-01/service-2") == 1
    assert parsed.count("s3/2006-03-01/endpoint-rule-set-1") == 1


def test_preload_imports_the_allowed_backends_and_makes_nothing() -> None:
    # What a worker does before it forks its pool: import, but no client, no thread and no event loop, which a
    # fork would copy half-made into every pool process.
    code = (
        "import sys, threading\n"
        "from bucketzip import engine, stores\n"  # what the worker imports before it forks
        "from bucketzip.config import Settings\n"
        "stores.preload(Settings.from_env({'BUCKETZIP_ALLOWED_PROTOCOLS': 's3'}))\n"
        "assert {'bucketzip.stores.s3', 'aiobotocore.session', 's3fs'} <= set(sys.modules)\n"
        "assert 'boto3' not in sys.modules  # the S3 store runs on botocore alone\n"
        "assert 'bucketzip.stores.glacier' not in sys.modules  # not allowed: not loaded\n"
        "assert threading.active_count() == 1 and not stores._stores\n"
        "import fsspec.asyn\n"
        "assert fsspec.asyn.loop[0] is None, 'the IO loop was started'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


SINK_CLIENT = """
import sys
from bucketzip.config import Settings
from bucketzip.stores.s3 import CLIENT_CONFIG, boto_client
env = {"AWS_ACCESS_KEY_ID": "AKIDGIVEN", "AWS_SECRET_ACCESS_KEY": "given-secret", "AWS_REGION": "eu-west-3"}
client = boto_client(Settings.from_env(env), CLIENT_CONFIG)
credentials = client._request_signer._credentials
assert (credentials.access_key, credentials.secret_key) == ("AKIDGIVEN", "given-secret"), credentials
assert client.meta.region_name == "eu-west-3", client.meta.region_name
assert client.meta.config.signature_version == "s3v4"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "s3transfer", "multiprocessing"))
assert not loaded, loaded
"""


def test_the_sinks_client_is_botocores_with_the_settings_credentials_and_no_boto3() -> None:
    # boto3's session adds s3transfer's helpers to every S3 client it makes (and imports s3transfer, which
    # imports multiprocessing): ~50 ms of a cold start for methods the sink never calls.
    env = {"PATH": os.environ["PATH"], "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    r = subprocess.run([sys.executable, "-c", SINK_CLIENT], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_warm_makes_this_process_s3_store_and_both_its_clients(settings: Settings) -> None:
    from bucketzip import stores

    warmed = settings.replace(read_concurrency=settings.read_concurrency + 1)  # a store no other test made
    stores.warm(warmed)
    store: Any = store_for("s3", warmed)
    assert store._boto is not None and store.fs._s3 is not None  # the sink's client and the reads' client
