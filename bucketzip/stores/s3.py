"""S3 (and B2, MinIO, R2...): reads through s3fs's aiobotocore client, writes through ``s3sink``.

s3fs gives us the configured async session (credentials chain, endpoint, per-bucket regions, its event loop),
which serves many concurrent GETs cheaply; we call the S3 API directly so that we control exactly what is sent:
If-Match on every read and one streaming GET per object (moto, and some S3-compatibles, read the whole object for
each ranged GET). Parts are uploaded by botocore's blocking client on threads (see ``s3sink``). Errors are translated by
``stores.base.translate``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from ..config import Settings
from ..errors import AccessDenied, CredentialsError, SourceChanged, TransientError
from ..spec import Location
from .base import ObjectInfo, RestoreState, SinkOptions, error_code, translate
from .s3sink import S3Sink, abort_upload

log = logging.getLogger(__name__)


def restore_state(header: str | None) -> RestoreState:
    """``ongoing-request="true"`` while S3 restores; ``ongoing-request="false", expiry-date=...`` once done."""
    if not header:
        return "archived"
    return "ongoing" if 'ongoing-request="true"' in header.replace(" ", "") else "restored"


CLIENT_CONFIG: dict[str, Any] = {
    # botocore >= 1.36 adds CRC checksums to every request by default, which several S3-compatible stores
    # (older MinIO, B2, R2) reject; send them only where the API requires them.
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
    # Presigned URLs must be SigV4: SigV2 is refused in newer regions and by most S3-compatibles.
    "signature_version": "s3v4",
}
RESUME_ATTEMPTS = 3  # a GET whose connection drops mid-body resumes from where it stopped, this many times


def _timestamp(value: str) -> datetime:
    """S3's timestamps are ISO 8601 in XML bodies (listings) and RFC 7231 dates in headers (a GET's
    Last-Modified). ``fromisoformat`` parses the first ~50x and ``parsedate_to_datetime`` the second ~20x
    faster than botocore's default (dateutil, ~80 us each): that parse was 14% of our CPU listing 20,000
    objects, and it runs again on every GET. Anything else, or a date without a zone, goes to botocore's."""
    try:
        parsed = datetime.fromisoformat(value) if value[:1].isdigit() else parsedate_to_datetime(value)
        if parsed.tzinfo is not None:
            return parsed
    except (TypeError, ValueError, IndexError):
        pass
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


def full_object_crc32(response: dict[str, Any]) -> int | None:
    """The object's CRC-32 from a HEAD with ``ChecksumMode=ENABLED``, if it is the CRC-32 of the whole object.

    A multipart upload's COMPOSITE checksum is a checksum of the parts' checksums, not the object's: only
    ``ChecksumType: FULL_OBJECT`` is taken, or, from stores that report no type (older S3, moto), a checksum
    of an object uploaded in one part (its ETag has no ``-N`` suffix), which is of the whole object. The
    writer checks the data against it anyway: a wrong one fails the job (SourceChanged), never the archive.
    """
    value = response.get("ChecksumCRC32")
    kind = response.get("ChecksumType")
    if not value or kind not in (None, "FULL_OBJECT"):
        return None
    if kind is None and ("-" in value or "-" in (response.get("ETag") or "")):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


async def presign_lifetime(credentials: Any, expires: int, temporary_cap: int) -> int:
    """How long a URL signed with ``credentials`` can work, at most ``expires``. Temporary credentials (with a
    session token) take the URL down with them: at most ``temporary_cap`` seconds then, and at most what they
    have left when botocore knows their expiry (a role's credentials; not a bare AWS_SESSION_TOKEN)."""
    if credentials is None:
        return expires
    frozen = await credentials.get_frozen_credentials()
    if not frozen.token:
        return expires
    lifetime = min(expires, temporary_cap)
    expiry = getattr(credentials, "_expiry_time", None)  # RefreshableCredentials'
    if expiry is not None:
        lifetime = min(lifetime, max(1, int(expiry.timestamp() - time.time())))
    return lifetime


def _caller_checks_body(context: dict[str, Any], **_: Any) -> None:
    """``before-call.s3.GetObject`` on the reads' clients: botocore does not check a GET's body against the
    checksum the GET asked for (``ChecksumMode``). The one who asks checks it itself: ``read``'s
    ``on_checksum`` hands it to the ZIP writer, which computes every entry's CRC-32 anyway (ISA-L's, ~10 GB/s)
    and fails the job on a mismatch. botocore's check was a second CRC-32 of every such byte (zlib's, ~3 GB/s,
    on the reads' event loop): ~5% of a mixed job's CPU. Should botocore stop keeping its plan where this looks,
    it checks again: slower, never unchecked."""
    checksum = context.get("checksum")
    if isinstance(checksum, dict):
        checksum.pop("response_algorithms", None)


def _session(session: Any) -> Any:
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    return session


def boto_client(settings: Settings, config: dict[str, Any], data_loader: Any = None) -> Any:
    """A blocking S3 client for ``settings`` (credentials, endpoint, region) with botocore ``config``.

    It is botocore's own client, the one ``boto3.client("s3")`` returns, made without boto3's session layer:
    that layer adds to every S3 client the transfer helpers (``upload_file`` and the like, from s3transfer),
    which the sink never calls, and importing them was ~50 ms of every cold start. Credentials, profile and
    region take the same path boto3's session gives them: given ones if both key and secret are set, else
    botocore's chain."""
    import botocore.session
    from botocore.config import Config

    s = settings
    core = _session(botocore.session.Session(profile=s.profile))
    if data_loader is not None:
        core.register_component("data_loader", data_loader)
    if s.access_key_id and s.secret_access_key:
        core.set_credentials(s.access_key_id, s.secret_access_key, s.session_token)
    return core.create_client("s3", region_name=s.region, endpoint_url=s.endpoint_url, config=Config(**config))


def check(settings: Settings, timeout: float, buckets: list[str]) -> None:
    """Raise (translated) unless the endpoint answers within about ``timeout`` seconds, with no retry: list one
    key of each of ``buckets``, or else the buckets. "Denied" is an answer; bad credentials are not. Loads
    botocore, not s3fs."""
    config = {**CLIENT_CONFIG, "connect_timeout": timeout, "read_timeout": timeout}
    client = boto_client(settings, {**config, "retries": {"mode": "standard", "max_attempts": 1}})
    url = "s3://"
    try:
        for bucket in buckets:
            url = f"s3://{bucket}"
            client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        if not buckets:
            client.list_buckets()
    except Exception as exc:
        err = translate(exc, url, "read")
        if not (isinstance(err, AccessDenied) and not isinstance(err, CredentialsError)):
            raise err from exc
    finally:
        client.close()


class S3Store:
    def __init__(self, settings: Settings) -> None:
        import aiobotocore.session  # imported here: a producer that only enqueues never loads them
        import s3fs

        self.config: dict[str, Any] = {
            **CLIENT_CONFIG,
            # Enough connections for every concurrent read and part upload of a job, plus listings.
            "max_pool_connections": settings.read_concurrency + settings.upload_concurrency + 8,
            "retries": {"mode": "standard", "max_attempts": 5},
        }
        self.session = _session(aiobotocore.session.AioSession(profile=settings.profile))
        self.session.register("before-call.s3.GetObject", _caller_checks_body)
        self.fs = s3fs.S3FileSystem(
            skip_instance_cache=True, session=self.session, config_kwargs=self.config, **settings.s3_options()
        )
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.upload_concurrency + 1, thread_name_prefix="bucketzip-upload")
        self._boto: Any = None
        self._boto_lock = threading.Lock()
        # Build the sink's client now, on the pool, while the caller lists and starts reading: it is ~80 ms
        # of imports and set-up that would otherwise hold back the first part upload. (A failure here is
        # raised again where the client is used.) The S3 model is parsed first, once, for both clients.
        self._models = self.pool.submit(self._load_models)
        self.pool.submit(self.boto)

    def warm(self) -> None:
        """Make both clients now, not in the first job: the sink's (botocore's) and the reads' (s3fs's aiobotocore
        client, on the IO loop). Blocks until both are made; sends no request."""
        import fsspec.asyn

        self.boto()
        fsspec.asyn.sync(self.fs.loop, self.client)

    def boto(self) -> Any:
        """The blocking client the sink uploads with (made once, on first use; thread-safe)."""
        with self._boto_lock:
            if self._boto is None:
                self._boto = self._new_boto()
            return self._boto

    def _load_models(self) -> None:
        """Parse the S3 service model and endpoint rules into the loader both clients share, which caches them.
        The two clients, made at once on two threads, each parsed them: ~150 ms of CPU more in a job's start."""
        loader = self.session.get_component("data_loader")
        for kind in ("service-2", "endpoint-rule-set-1"):
            loader.load_service_model("s3", kind, api_version=None)

    def _new_boto(self) -> Any:
        self._models.result()
        return boto_client(self.settings, self.config, self.session.get_component("data_loader"))

    async def client(self, bucket: str | None = None) -> Any:
        if self.fs._s3 is None:
            await asyncio.wrap_future(self._models)
            await self.fs.set_session()
        return await self.fs.get_s3(bucket)

    async def head(self, loc: Location) -> ObjectInfo | None:
        s3 = await self.client(loc.bucket)
        try:
            r = await s3.head_object(Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED")
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            if error_code(exc) == "403":  # a HEAD's answer has no body to say why: a GET's does
                exc = await self._why_forbidden(s3, loc) or exc
            raise translate(exc, loc.url, "read") from exc
        metadata = {k.lower(): v for k, v in r.get("Metadata", {}).items()}
        return ObjectInfo(
            loc,
            r["ContentLength"],
            r["LastModified"],
            r.get("ETag"),
            r.get("VersionId"),
            metadata,
            storage_class=r.get("StorageClass"),
            crc32=full_object_crc32(r),
        )

    async def checksum(self, obj: ObjectInfo) -> int | None:
        if not self.settings.source_checksums or obj.crc32 is not None:
            return obj.crc32 if self.settings.source_checksums else None  # from the selection's HEAD
        loc = obj.location
        s3 = await self.client(loc.bucket)
        kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key, "ChecksumMode": "ENABLED"}
        if obj.etag:
            kwargs["IfMatch"] = obj.etag
        if obj.version_id:
            kwargs["VersionId"] = obj.version_id
        try:
            r = await s3.head_object(**kwargs)
        except Exception as exc:
            raise translate(exc, loc.url, "read") from exc
        return full_object_crc32(r)

    async def _why_forbidden(self, s3: Any, loc: Location) -> Exception | None:
        """The error a one-byte GET of ``loc`` answers with (InvalidAccessKeyId, AccessDenied...), if any."""
        try:
            resp = await s3.get_object(Bucket=loc.bucket, Key=loc.key, Range="bytes=0-0")
            resp["Body"].close()
        except Exception as exc:
            return exc
        return None

    async def list(self, loc: Location) -> AsyncIterator[ObjectInfo]:
        s3 = await self.client(loc.bucket)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Prefix": loc.key}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = await s3.list_objects_v2(**kwargs)
            except Exception as exc:
                raise translate(exc, loc.url, "read") from exc
            for o in page.get("Contents", ()):
                key = Location("s3", loc.bucket, o["Key"])
                yield ObjectInfo(key, o["Size"], o["LastModified"], o.get("ETag"), storage_class=o.get("StorageClass"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def read(
        self, obj: ObjectInfo, chunk_size: int, on_checksum: Callable[[int | None], None] | None = None
    ) -> AsyncIterator[bytes]:
        loc = obj.location
        s3 = await self.client(loc.bucket)
        done = 0
        resumes = 0
        # The GET says the object's checksum too when asked; the caller checks the bytes against it (botocore
        # does not: _caller_checks_body).
        ask = on_checksum is not None and self.settings.source_checksums
        while True:
            kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key}
            if obj.etag:
                kwargs["IfMatch"] = obj.etag
            if obj.version_id:
                kwargs["VersionId"] = obj.version_id
            if done:
                kwargs["Range"] = f"bytes={done}-"
            elif ask:
                kwargs["ChecksumMode"] = "ENABLED"
            try:
                resp = await s3.get_object(**kwargs)
            except Exception as exc:
                raise translate(exc, loc.url, "read") from exc
            if ask and on_checksum is not None:
                on_checksum(full_object_crc32(resp))
                ask = False  # once: a GET sent again (a resume) asks with a Range, which gets no checksum
            body = resp["Body"]
            try:
                buf: list[bytes] = []
                held = 0
                while True:
                    piece = await body.read(chunk_size - held)
                    if not piece:
                        break
                    buf.append(piece)
                    held += len(piece)
                    if held >= chunk_size:
                        chunk = b"".join(buf)
                        buf, held = [], 0
                        done += len(chunk)
                        yield chunk
                if held:
                    done += held
                    yield b"".join(buf)
                break
            except Exception as exc:
                err = translate(exc, loc.url, "read")
                # A dropped connection mid-body: resume from the last byte we passed on (If-Match keeps it
                # the same object). Bytes buffered but not yet yielded are simply read again.
                if isinstance(err, TransientError) and resumes < RESUME_ATTEMPTS and done < obj.size:
                    resumes += 1
                    continue
                raise err from exc
            finally:
                body.close()
        if done != obj.size:
            raise SourceChanged(loc.url, f"read {done} bytes, but it was listed with {obj.size}")

    async def open_sink(self, dest: Location, options: SinkOptions) -> S3Sink:
        client = await asyncio.get_running_loop().run_in_executor(self.pool, self.boto)
        return S3Sink(client, self.pool, dest, options)

    async def presign(self, loc: Location, version_id: str | None, expires: int) -> str:
        """A GET URL for ``loc`` valid for ``expires`` seconds - or less, under temporary credentials: see
        ``presign_lifetime``."""
        s3 = await self.client(loc.bucket)
        params = {"Bucket": loc.bucket, "Key": loc.key}
        if version_id:
            params["VersionId"] = version_id
        lifetime = await presign_lifetime(s3._get_credentials(), expires, self.settings.presign_expires_temporary)
        if lifetime < expires:
            log.warning(
                "the URL of %s lasts %d s, not the %d s asked: it is signed with temporary credentials (a session "
                "token), and dies with them (BUCKETZIP_PRESIGN_EXPIRES_TEMPORARY)",
                loc.url,
                lifetime,
                expires,
            )
        return str(await s3.generate_presigned_url("get_object", Params=params, ExpiresIn=lifetime))

    async def restore_state(self, obj: ObjectInfo) -> RestoreState:
        """An archived object's restore, from its HEAD's ``x-amz-restore``: none requested, ongoing, or done."""
        loc = obj.location
        s3 = await self.client(loc.bucket)
        kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key}
        if obj.version_id:
            kwargs["VersionId"] = obj.version_id
        try:
            r = await s3.head_object(**kwargs)
        except Exception as exc:
            raise translate(exc, loc.url, "read") from exc
        return restore_state(r.get("Restore"))

    async def request_restore(self, obj: ObjectInfo, days: int, tier: str) -> None:
        """Ask S3 to restore an archived object for ``days`` (a restore already running is not an error)."""
        loc = obj.location
        s3 = await self.client(loc.bucket)
        kwargs: dict[str, Any] = {
            "Bucket": loc.bucket,
            "Key": loc.key,
            "RestoreRequest": {"Days": days, "GlacierJobParameters": {"Tier": tier}},
        }
        if obj.version_id:
            kwargs["VersionId"] = obj.version_id
        try:
            await s3.restore_object(**kwargs)
        except Exception as exc:
            if error_code(exc) != "RestoreAlreadyInProgress":
                raise translate(exc, loc.url, "read") from exc

    async def list_uploads(self, bucket: str) -> builtins.list[dict[str, Any]]:
        """In-progress multipart uploads in ``bucket`` (for the sweeper)."""
        s3 = await self.client(bucket)
        out: builtins.list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": bucket}
        while True:
            try:
                page = await s3.list_multipart_uploads(**kwargs)
            except Exception as exc:
                raise translate(exc, f"s3://{bucket}/", "read") from exc
            out.extend(page.get("Uploads", ()))
            if not page.get("IsTruncated"):
                return out
            kwargs.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        client = await asyncio.get_running_loop().run_in_executor(self.pool, self.boto)
        await asyncio.get_running_loop().run_in_executor(self.pool, abort_upload, client, bucket, key, upload_id)
