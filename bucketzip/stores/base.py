"""Object storage as the engine sees it: list, stat, read, a transactional sink, presigned URLs.

The backends (``stores.s3.S3Store``, ``stores.fs.FsStore``...) implement these protocols and are registered in
``stores/__init__.py``. This module is the one place where third-party errors (botocore, aiohttp, OSError)
become bucketzip's (``translate``).

A sink is transactional: ``commit()`` publishes the object; ``abort()`` (which every error path calls) leaves
nothing behind - no object, no in-progress multipart upload.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import (
    AccessDenied,
    BucketzipError,
    CredentialsError,
    EndpointError,
    SourceChanged,
    SourceMissing,
    SourceUnreadable,
    TransientError,
    UploadFailed,
)
from ..spec import Location


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One source object as listed: enough to name, size and read it consistently."""

    location: Location
    size: int
    modified: datetime
    etag: str | None = None  # read with If-Match, so an overwrite mid-job is caught
    version_id: str | None = None
    # User metadata, where a HEAD said it (a listing does not): how a run recognises an archive it made.
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    storage_class: str | None = None  # as the listing or HEAD says; None for the store's standard class
    crc32: int | None = None  # the whole object's CRC-32, when the store keeps one (see Store.checksum)

    @property
    def archived(self) -> bool:
        """In an archive class: readable only once restored."""
        return self.storage_class in ARCHIVED_CLASSES


# S3 classes whose objects must be restored before a GET (GLACIER_IR is read directly).
ARCHIVED_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
RestoreState = Literal["archived", "ongoing", "restored"]  # not requested / requested, running / readable


@dataclass(frozen=True)
class SinkOptions:
    content_type: str = "application/zip"
    storage_class: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    content_disposition: str | None = None
    part_size: int = 8 * 2**20
    concurrency: int = 3
    description: str | None = None  # a vault archive's description
    # Called with the multipart upload id once one is created (the queue records it for the sweeper).
    on_upload: Callable[[str], None] | None = None
    # (job id, run token): tagged on the archive as metadata, so that the store's answer to a retried or
    # conditional commit can be checked against the destination (was it this run that published?).
    tag: tuple[str, str] | None = None
    # Publish only if the destination is still as the run found it: absent (if_none_match), or this ETag.
    if_none_match: bool = False
    if_match: str | None = None
    # About how many bytes will be written, when known (the input's size): a sink that will clearly need a
    # multipart upload starts it at once, while the first objects are still being read.
    size_hint: int | None = None
    # Called with each whole part's buffer (a bytearray of ``part_size`` bytes) once its upload is over, so that
    # the writer can fill it again (buffers.Spares).
    recycle: Callable[[bytearray], None] | None = None


JOB_TAG, RUN_TAG = "bucketzip-job", "bucketzip-run"  # the metadata keys of SinkOptions.tag


def tag_metadata(tag: tuple[str, str] | None) -> dict[str, str]:
    return {JOB_TAG: tag[0], RUN_TAG: tag[1]} if tag else {}


@dataclass(frozen=True)
class Published:
    """What the destination answered when the archive was committed."""

    size: int
    etag: str | None
    version_id: str | None
    parts: int
    part_size: int | None = None  # when the sink chose its own (a vault's power-of-two parts)
    archive_id: str | None = None  # a vault archive's id
    tree_hash: str | None = None  # a vault archive's SHA-256 tree hash (hex)


class Sink(Protocol):
    async def write(self, data: bytes | bytearray) -> None: ...
    async def commit(self) -> Published: ...
    async def abort(self) -> None: ...


@runtime_checkable
class Sealing(Protocol):
    """A sink whose upload a later run can complete, from what ``seal`` returned, without making the archive
    again: a vault's (Glacier's CompleteMultipartUpload answers a repeat with the same archive for a while). A
    run that dies after its fence leaves its sealed upload behind; ``Completing.complete_sealed`` finishes it."""

    async def seal(self) -> dict[str, Any]:
        """Upload the rest and wait for every part; afterwards ``commit`` only completes. Returns what
        ``complete_sealed`` needs (JSON: it is recorded at the fence)."""
        ...


@runtime_checkable
class Completing(Protocol):
    """A store that completes an upload a ``Sealing`` sink sealed."""

    async def complete_sealed(self, dest: Location, sealed: dict[str, Any]) -> Published | None:
        """Complete it (again); None when the upload is gone and nothing says what became of it."""
        ...


class Store(Protocol):
    async def head(self, loc: Location) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""
        ...

    def list(self, loc: Location) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``loc.key``, in key order."""
        ...

    def read(
        self, obj: ObjectInfo, chunk_size: int, on_checksum: Callable[[int | None], None] | None = None
    ) -> AsyncIterator[bytes]:
        """The object's bytes in chunks of about ``chunk_size``; raises SourceChanged if it changed.

        A store that can say with the same request what ``checksum`` would (S3's GET with ``ChecksumMode``)
        calls ``on_checksum`` with it once, before the first chunk; a STORED entry then needs no request of its
        own for its CRC-32. A store that cannot does not call it. The caller that asks checks the bytes against
        the answer: the store need not."""
        ...

    async def checksum(self, obj: ObjectInfo) -> int | None:
        """The CRC-32 of the whole object as the store recorded it, or None when it has none. A STORED entry
        declares its CRC-32 before its data: with this it needs one read of the object instead of two."""
        ...

    async def open_sink(self, dest: Location, options: SinkOptions) -> Sink: ...

    async def presign(self, loc: Location, version_id: str | None, expires: int) -> str | None: ...


class Archival(Protocol):
    """A store whose objects may sit in an archive class (S3): restore state and restore requests."""

    async def restore_state(self, obj: ObjectInfo) -> RestoreState: ...

    async def request_restore(self, obj: ObjectInfo, days: int, tier: str) -> None: ...


# --- the one place third-party errors are translated ---

_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion", "ResourceNotFoundException"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
# Credentials the endpoint does not accept: say which, and what to set, rather than "access denied".
_BAD_CREDENTIALS = {  # code: (the cause, what to do)
    "InvalidAccessKeyId": (
        "the access key id is not known to the endpoint",
        "check AWS_ACCESS_KEY_ID (and AWS_ENDPOINT_URL_S3: keys belong to one endpoint)",
    ),
    "SignatureDoesNotMatch": (
        "the secret access key does not match the access key id",
        "check AWS_SECRET_ACCESS_KEY",
    ),
    "InvalidToken": ("the session token is not valid", "check AWS_SESSION_TOKEN"),
    "ExpiredToken": ("the session token has expired", "renew the temporary credentials (AWS_SESSION_TOKEN)"),
    "TokenRefreshRequired": ("the session token has expired", "renew the temporary credentials (AWS_SESSION_TOKEN)"),
}
_NO_CREDENTIALS = (
    "no credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
    "(or run where an instance role provides them)"
)
_CHANGED = {"PreconditionFailed", "412", "InvalidRange", "416"}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    # Glacier's; any other 4xx from a vault is permanent (UploadFailed on write: the job fails at once)
    "RequestTimeoutException",
    "ServiceUnavailableException",
    "InsufficientCapacityException",
}
# A 5xx is the server's trouble, worth retrying - except 501, "this store does not implement that".
_PERMANENT_5XX = {"NotImplemented", "501"}

# Matched by class name (the whole MRO), so that this module imports neither botocore nor aiohttp.
_TLS = {
    "SSLError",  # botocore's (it wraps urllib3's and aiohttp's) and the ssl module's
    "ClientSSLError",
    "ClientConnectorSSLError",
    "ClientConnectorCertificateError",
    "SSLCertVerificationError",
}
_NETWORK = {
    "ClientConnectionError",
    "ClientPayloadError",
    "ServerDisconnectedError",
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "ResponseStreamingError",
    "IncompleteReadError",
}
# TLS failures that no retry will mend: the certificate, or TLS spoken to a plain-HTTP port.
_TLS_PERMANENT = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "WRONG_VERSION_NUMBER", "wrong version")


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def translate(exc: BaseException, url: str, operation: str) -> BaseException:
    """Map a botocore/aiohttp/OS error raised while doing ``operation`` on ``url`` to a BucketzipError whose
    message says the real cause. Anything unrecognised (a bug of ours) is returned as it is.

    ``operation`` is ``read`` (a source) or ``write`` (the destination); the same S3 code means different
    things for each (NoSuchBucket is a missing source, but a destination we cannot write).
    """
    if isinstance(exc, BucketzipError | asyncio.CancelledError):
        return exc
    code = error_code(exc)
    if code is not None:
        return _answered(exc, code, url, operation)
    names = {c.__name__ for c in type(exc).__mro__}
    if "FlexibleChecksumError" in names:  # botocore checked a GET's body against the checksum it came with
        return SourceChanged(url, f"its bytes do not match the checksum the store sent with them ({exc})")
    if "NoCredentialsError" in names:
        return CredentialsError(url, operation, _NO_CREDENTIALS)
    if "PartialCredentialsError" in names:
        return CredentialsError(url, operation, f"{exc}: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if names & _TLS:
        text = str(exc)
        if any(marker in text for marker in _TLS_PERMANENT):
            return EndpointError(
                url,
                f"TLS failed ({text}): check the scheme of AWS_ENDPOINT_URL_S3, and AWS_CA_BUNDLE if the "
                "endpoint's certificate is signed by a private CA",
            )
        return TransientError(url, f"TLS error: {text}")
    if isinstance(exc, FileNotFoundError):
        return SourceMissing([url]) if operation == "read" else UploadFailed(url, "the folder does not exist")
    if isinstance(exc, PermissionError):
        return AccessDenied(url, operation)
    if names & _NETWORK or isinstance(exc, ConnectionError | TimeoutError):
        return TransientError(url, f"cannot reach the S3 endpoint: {type(exc).__name__}: {exc}")
    return exc


def _answered(exc: BaseException, code: str, url: str, operation: str) -> BucketzipError:
    """An error the endpoint answered with (a botocore ClientError)."""
    response = exc.response  # type: ignore[attr-defined]
    message = response.get("Error", {}).get("Message") or code
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    server_side = (isinstance(status, int) and status >= 500) or code.startswith("5")
    if code in _TRANSIENT or (server_side and code not in _PERMANENT_5XX and status != 501):
        return TransientError(url, f"{code}: {message}")
    if code in _BAD_CREDENTIALS:
        cause, advice = _BAD_CREDENTIALS[code]
        return CredentialsError(url, operation, f"{cause} ({code}): {advice}")
    if code in _DENIED:
        return AccessDenied(url, operation)
    if operation == "read":
        if code in _MISSING or code == "NoSuchBucket":
            return SourceMissing([url])
        if code in _CHANGED:
            return SourceChanged(url, "it was overwritten or deleted after it was listed")
        if code == "InvalidObjectState":
            return SourceUnreadable(url, "it is archived (GLACIER or DEEP_ARCHIVE); restore it before zipping it")
    if code == "NoSuchBucket":
        return UploadFailed(url, "the bucket does not exist")
    if code == "ResourceNotFoundException" and url.startswith("glacier://"):
        return UploadFailed(url, "the vault (or the upload) does not exist")
    if operation == "write":
        return UploadFailed(url, f"{code}: {message}")
    # Most codes are names, so the HTTP status tells a permanent client error from one worth retrying.
    if code.startswith("4") or (isinstance(status, int) and 400 <= status < 500) or server_side:
        return SourceUnreadable(url, f"{code}: {message}")
    return TransientError(url, f"{code}: {message}")
