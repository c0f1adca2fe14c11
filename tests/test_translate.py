"""``stores.base.translate`` gives every S3 failure its real cause: wrong or missing credentials, TLS, an
unlisted 5xx. botocore's own exception classes, built as botocore builds them; and real endpoints where a
failure is quick to provoke (no credentials at all, a moto server that checks credentials)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    FlexibleChecksumError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)

from bucketzip.config import Settings
from bucketzip.engine import run_sync
from bucketzip.errors import (
    AccessDenied,
    CredentialsError,
    EndpointError,
    SourceChanged,
    TransientError,
    UploadFailed,
)
from bucketzip.spec import Location
from bucketzip.stores import SinkOptions, store_for, translate

URL = "s3://exports/out.zip"


def answered(code: str, status: int, message: str = "the message") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart"
    )


@pytest.mark.parametrize("operation", ["read", "write"])
@pytest.mark.parametrize(("code", "status"), [("WeirdNewError", 500), ("BadGateway", 502), ("XMinioBusy", 507)])
def test_an_unlisted_5xx_is_transient_on_reads_and_writes(code: str, status: int, operation: str) -> None:
    exc = translate(answered(code, status), URL, operation)
    assert type(exc) is TransientError and code in str(exc)


def test_not_implemented_is_permanent() -> None:
    # 501: this store does not do that (a storage class MinIO lacks, say); retrying cannot help.
    assert type(translate(answered("NotImplemented", 501), URL, "write")) is UploadFailed


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("InvalidAccessKeyId", "the access key id is not known to the endpoint"),
        ("SignatureDoesNotMatch", "the secret access key does not match the access key id"),
        ("ExpiredToken", "the session token has expired"),
        ("InvalidToken", "the session token is not valid"),
    ],
)
def test_wrong_credentials_say_so(code: str, says: str) -> None:
    exc = translate(answered(code, 403), URL, "read")
    assert type(exc) is CredentialsError and isinstance(exc, AccessDenied)  # still an AccessDenied to callers
    assert str(exc).startswith(f"cannot read {URL}: {says}") and code in str(exc)
    assert "access denied" not in str(exc)


def test_access_denied_stays_access_denied() -> None:
    exc = translate(answered("AccessDenied", 403), URL, "write")
    assert type(exc) is AccessDenied and str(exc) == f"access denied: write {URL}"


def test_no_credentials_say_what_to_set() -> None:
    exc = translate(NoCredentialsError(), URL, "write")
    assert type(exc) is CredentialsError
    assert "no credentials were found" in str(exc) and "AWS_ACCESS_KEY_ID" in str(exc)


def test_partial_credentials_say_which_is_missing() -> None:
    exc = translate(PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), URL, "read")
    assert type(exc) is CredentialsError and "missing: AWS_SECRET_ACCESS_KEY" in str(exc)


def _verify_failed() -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed")
    err.reason, err.verify_message = "CERTIFICATE_VERIFY_FAILED", "self-signed certificate"
    return err


@pytest.mark.parametrize(
    "raised",
    [
        SSLError(endpoint_url="https://s3.example", error=_verify_failed()),  # botocore's (urllib3, aiohttp)
        _verify_failed(),  # the ssl module's
        SSLError(endpoint_url="https://s3.example", error=ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version")),
    ],
    ids=["botocore-verify", "ssl-verify", "plain-http-port"],
)
def test_tls_that_no_retry_mends_is_an_endpoint_error(raised: Exception) -> None:
    exc = translate(raised, URL, "read")
    assert type(exc) is EndpointError
    assert "TLS failed" in str(exc) and "AWS_CA_BUNDLE" in str(exc)


def test_other_tls_failures_are_transient() -> None:
    exc = translate(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), URL, "write")
    assert type(exc) is TransientError and "TLS error" in str(exc)


@pytest.mark.parametrize(
    "raised",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1/exports"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:1/exports"),
    ],
)
def test_connection_failures_are_transient_and_name_the_endpoint(raised: Exception) -> None:
    exc = translate(raised, URL, "write")
    assert type(exc) is TransientError
    assert "cannot reach the S3 endpoint" in str(exc) and "http://127.0.0.1:1/exports" in str(exc)


# --- real endpoints ---


@pytest.fixture
def no_credentials_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No credentials in the environment, no files, no instance metadata: botocore's chain finds nothing."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_no_credentials_end_to_end(no_credentials_anywhere: None, moto_url: str) -> None:
    settings = Settings.from_env({"AWS_ENDPOINT_URL_S3": moto_url, "AWS_REGION": "us-east-1"})
    store = store_for("s3", settings)
    with pytest.raises(CredentialsError, match="no credentials were found: set AWS_ACCESS_KEY_ID") as info:
        run_sync(store.head(Location("s3", "photos", "a.jpg")))
    assert info.value.operation == "read"

    async def write() -> None:
        sink = await store.open_sink(Location("s3", "exports", "out.zip"), SinkOptions())
        await sink.write(b"x")
        await sink.commit()

    with pytest.raises(CredentialsError, match="no credentials were found") as info:
        run_sync(write())
    assert info.value.operation == "write"


def test_half_the_credentials_end_to_end(
    no_credentials_anywhere: None, monkeypatch: pytest.MonkeyPatch, moto_url: str
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")  # and no secret
    settings = Settings.from_env({"AWS_ENDPOINT_URL_S3": moto_url, "AWS_REGION": "us-east-1"})
    with pytest.raises(CredentialsError, match="AWS_SECRET_ACCESS_KEY"):
        run_sync(store_for("s3", settings).head(Location("s3", "photos", "a.jpg")))


def test_a_body_that_fails_its_checksum_is_a_changed_source() -> None:
    # botocore checks a GET's body against the checksum sent with it (ChecksumMode) when the body ends.
    exc = FlexibleChecksumError(error_msg="Expected checksum AAAAAA== did not match calculated checksum: AQIDBA==")
    err = translate(exc, "s3://photos/a.jpg", "read")
    assert isinstance(err, SourceChanged) and err.url == "s3://photos/a.jpg"
    assert "do not match the checksum the store sent with them" in str(err)
