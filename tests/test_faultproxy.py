"""The fault proxy itself (tests/faultproxy.py), driven by boto3 against the moto server: every fault does what
it says, and the log counts what reached the server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.conftest import CREDENTIALS
from tests.faultproxy import FaultProxy, Rule, classify


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url, seed=7) as p:
        yield p


def client(proxy: FaultProxy, attempts: int = 1) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts}, read_timeout=20)
    return boto3.client("s3", endpoint_url=proxy.url, config=config, **CREDENTIALS)


@pytest.fixture
def bucket(make_bucket: Any) -> str:
    name: str = make_bucket()
    return name


def test_classify() -> None:
    assert classify("POST", "/b/k", "uploads") == ("create", "b", "k", None)
    assert classify("PUT", "/b/a%20b", "partNumber=1&uploadId=u") == ("part", "b", "a b", "u")
    assert classify("POST", "/b/k", "uploadId=u") == ("complete", "b", "k", "u")
    assert classify("DELETE", "/b/k", "uploadId=u") == ("abort", "b", "k", "u")
    assert classify("GET", "/b", "list-type=2&prefix=in%2F") == ("list", "b", "", None)
    assert classify("GET", "/b", "uploads") == ("list_uploads", "b", "", None)
    assert classify("GET", "/b/in/x", "") == ("get", "b", "in/x", None)
    assert classify("HEAD", "/b/in/x", "versionId=3") == ("head", "b", "in/x", None)
    assert classify("PUT", "/b/k", "x-id=PutObject") == ("put", "b", "k", None)
    assert classify("PUT", "/b", "versioning") == ("other", "b", "", None)
    with pytest.raises(ValueError, match="unknown fault"):
        Rule("get", "explode")


def multipart(s3: Any, bucket: str, key: str = "k") -> tuple[str, dict[str, Any]]:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 100)["ETag"]
    return upload, {"Parts": [{"PartNumber": 1, "ETag": etag}]}


def test_forwards_and_logs_every_operation(proxy: FaultProxy, bucket: str) -> None:
    s3 = client(proxy)
    s3.put_object(Bucket=bucket, Key="in/a", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="in/a")["Body"].read() == b"hello"
    assert s3.head_object(Bucket=bucket, Key="in/a")["ContentLength"] == 5
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="in/")["Contents"]] == ["in/a"]
    upload, parts = multipart(s3, bucket)
    s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload=parts)
    aborted, _ = multipart(s3, bucket, "gone")
    s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=aborted)
    ops = [e.op for e in proxy.exchanges() if e.bucket == bucket]
    assert ops == ["put", "get", "head", "list", "create", "part", "complete", "create", "part", "abort"]
    assert [(e.op, e.upstream_status) for e in proxy.exchanges() if not (e.answered and e.upstream_ok)] == []
    assert proxy.publications(bucket, "k") == 1 and proxy.publications(bucket, "in/a") == 1


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "SlowDown"), (503, "ServiceUnavailable")])
def test_error_answers_without_forwarding_and_a_retry_gets_through(
    proxy: FaultProxy, bucket: str, status: int, code: str
) -> None:
    rule = proxy.add("put", "error", status=status, code=code, times=1)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client(proxy).put_object(Bucket=bucket, Key="a", Body=b"1")
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert rule.hits == 1 and proxy.publications(bucket, "a") == 0
    r = client(proxy, attempts=3).put_object(Bucket=bucket, Key="a", Body=b"1")
    assert r["ResponseMetadata"]["RetryAttempts"] == 0 and proxy.publications(bucket, "a") == 1


def test_reset_and_truncate_break_the_connection(proxy: FaultProxy, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"z" * 100_000)
    proxy.add("get", "reset", times=1)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client(proxy).get_object(Bucket=bucket, Key="a")
    truncated = proxy.add("get", "truncate", times=1)
    body = client(proxy).get_object(Bucket=bucket, Key="a")["Body"]
    with pytest.raises(botocore.exceptions.ResponseStreamingError, match="IncompleteRead"):
        body.read()
    assert truncated.hits == 1
    assert client(proxy).get_object(Bucket=bucket, Key="a")["Body"].read() == b"z" * 100_000


def test_complete_answered_200_with_an_error_body(proxy: FaultProxy, bucket: str, s3: Any) -> None:
    s3c = client(proxy)
    upload, parts = multipart(s3c, bucket)
    proxy.add("complete", "error_body", times=1)
    with pytest.raises(botocore.exceptions.ClientError, match="InternalError"):
        s3c.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload=parts)
    assert proxy.publications(bucket, "k") == 0 and "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_a_lost_complete_response_then_no_such_upload_on_the_retry(proxy: FaultProxy, bucket: str, s3: Any) -> None:
    s3c = client(proxy, attempts=3)
    upload, parts = multipart(s3c, bucket)
    proxy.add("complete", "lose_response", times=1)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3c.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload=parts)
    assert caught.value.response["Error"]["Code"] == "NoSuchUpload"  # botocore retried; MinIO's answer
    completes = proxy.exchanges("complete")
    assert [(e.upstream_ok, e.answered) for e in completes] == [(True, False), (False, True)]
    assert proxy.publications(bucket, "k") == 1  # the archive is there all the same
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x" * 100


def test_a_lost_create_response_leaves_an_upload_nobody_knows(proxy: FaultProxy, bucket: str, s3: Any) -> None:
    proxy.add("create", "lose_response", times=1)
    upload = client(proxy, attempts=3).create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    uploads = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]]
    assert len(uploads) == 2 and upload in uploads


def test_a_stall_holds_the_request_until_released(proxy: FaultProxy, bucket: str, s3: Any) -> None:
    rule = proxy.add("put", "stall", times=1)
    done = threading.Event()

    def put() -> None:
        client(proxy).put_object(Bucket=bucket, Key="a", Body=b"1")
        done.set()

    t = threading.Thread(target=put)
    t.start()
    proxy.wait_held(rule, 20)
    assert not done.is_set() and proxy.publications(bucket, "a") == 0  # held before the server saw it
    rule.release()
    t.join(20)
    assert done.is_set() and proxy.publications(bucket, "a") == 1


def test_a_stalled_response_has_already_acted(proxy: FaultProxy, bucket: str, s3: Any) -> None:
    rule = proxy.add("put", "stall_response", times=1)
    t = threading.Thread(target=lambda: client(proxy).put_object(Bucket=bucket, Key="a", Body=b"1"))
    t.start()
    proxy.wait_held(rule, 20)
    assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == b"1"  # the store acted
    assert not proxy.exchanges("put")[0].answered
    rule.release()
    t.join(20)
    assert proxy.exchanges("put")[0].answered


def test_a_stalled_request_whose_client_died_is_dropped(proxy: FaultProxy, bucket: str, s3: Any) -> None:
    import http.client
    import urllib.parse

    rule = proxy.add("put", "stall", times=1)
    port = urllib.parse.urlsplit(proxy.url).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("PUT", f"/{bucket}/a", body=b"1")
    proxy.wait_held(rule, 20)
    conn.close()  # the client is gone (a killed worker)
    rule.release()
    wait_for(lambda: rule.held == 0)
    assert proxy.exchanges("put")[0].upstream_status is None and "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_probability_is_seeded(moto_url: str, bucket: str) -> None:
    def run(seed: int) -> list[bool]:
        with FaultProxy(moto_url, seed=seed) as p:
            p.add("other", "error", status=500, code="InternalError", times=None, probability=0.3)
            s3 = client(p)
            outcomes = []
            for _ in range(30):
                try:
                    s3.head_bucket(Bucket=bucket)
                    outcomes.append(True)
                except botocore.exceptions.ClientError:
                    outcomes.append(False)
            return outcomes

    first = run(3)
    assert first == run(3) and 0 < first.count(False) < 30


def wait_for(predicate: Any, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)
