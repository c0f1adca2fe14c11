"""S3 (and B2, MinIO, R2...) through s3fs's aiobotocore client.

s3fs gives us the configured session (credentials chain, endpoint, per-bucket regions, its event loop); we call
the S3 API directly so that we control exactly what is sent: If-Match on every read, a multipart upload that is
published only by ``commit()``, and one streaming GET per object (moto, and some S3-compatibles, read the whole
object for each ranged GET). Errors are translated by ``storage.translate``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from .config import Settings
from .errors import SourceChanged, TransientError
from .spec import Location
from .storage import ObjectInfo, Published, SinkOptions, error_code, translate

RESUME_ATTEMPTS = 3  # a GET whose connection drops mid-body resumes from where it stopped, this many times
ABORT_ATTEMPTS = 3  # S3 may need an abort repeated before every part is freed


class S3Store:
    def __init__(self, settings: Settings) -> None:
        import s3fs  # imported here: a producer that only enqueues never loads it

        config: dict[str, Any] = {
            # Enough connections for every concurrent read and part upload of a job, plus listings.
            "max_pool_connections": settings.read_concurrency + settings.upload_concurrency + 8,
            "retries": {"mode": "standard", "max_attempts": 5},
            # botocore >= 1.36 adds CRC checksums to every request by default, which several S3-compatible
            # stores (older MinIO, B2, R2) reject; send them only where the API requires them.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            # Presigned URLs must be SigV4: SigV2 is refused in newer regions and by most S3-compatibles.
            "signature_version": "s3v4",
        }
        self.fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs=config, **settings.s3_options())
        self.settings = settings

    async def client(self, bucket: str | None = None) -> Any:
        if self.fs._s3 is None:
            await self.fs.set_session()
        return await self.fs.get_s3(bucket)

    async def head(self, loc: Location) -> ObjectInfo | None:
        s3 = await self.client(loc.bucket)
        try:
            r = await s3.head_object(Bucket=loc.bucket, Key=loc.key)
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise translate(exc, loc.url, "read") from exc
        return ObjectInfo(loc, r["ContentLength"], r["LastModified"], r.get("ETag"), r.get("VersionId"))

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
                yield ObjectInfo(Location("s3", loc.bucket, o["Key"]), o["Size"], o["LastModified"], o.get("ETag"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def read(self, obj: ObjectInfo, chunk_size: int) -> AsyncIterator[bytes]:
        loc = obj.location
        s3 = await self.client(loc.bucket)
        done = 0
        resumes = 0
        while True:
            kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key}
            if obj.etag:
                kwargs["IfMatch"] = obj.etag
            if obj.version_id:
                kwargs["VersionId"] = obj.version_id
            if done:
                kwargs["Range"] = f"bytes={done}-"
            try:
                resp = await s3.get_object(**kwargs)
            except Exception as exc:
                raise translate(exc, loc.url, "read") from exc
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
        return S3Sink(await self.client(dest.bucket), dest, options)

    async def presign(self, loc: Location, version_id: str | None, expires: int) -> str:
        s3 = await self.client(loc.bucket)
        params = {"Bucket": loc.bucket, "Key": loc.key}
        if version_id:
            params["VersionId"] = version_id
        return str(await s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expires))

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
        await _abort(await self.client(bucket), bucket, key, upload_id)


async def _abort(s3: Any, bucket: str, key: str, upload_id: str) -> None:
    for attempt in range(ABORT_ATTEMPTS):
        try:
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            return
        except Exception as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):
                return
            if attempt == ABORT_ATTEMPTS - 1:
                raise translate(exc, f"s3://{bucket}/{key}", "write") from exc
            await asyncio.sleep(0.2 * 2**attempt)


class S3Sink:
    """A multipart upload published only by ``commit()``.

    Parts are cut at exactly ``part_size`` (so every non-final part is the same size, as R2 requires) and
    uploaded ``concurrency`` at a time while the next one fills; ``write`` waits when that many are in flight,
    which bounds memory at about ``(concurrency + 2) * part_size``. An archive smaller than one part is sent
    with a single PUT, and no multipart upload is ever created for it.
    """

    def __init__(self, s3: Any, dest: Location, options: SinkOptions) -> None:
        self.s3, self.dest, self.options = s3, dest, options
        self.upload_id: str | None = None
        self._buffer = bytearray()
        self._size = 0
        self._parts: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(options.concurrency)
        self._failure: BaseException | None = None
        self._closed = False

    def _object_args(self) -> dict[str, Any]:
        o = self.options
        args: dict[str, Any] = {
            "Bucket": self.dest.bucket,
            "Key": self.dest.key,
            "ContentType": o.content_type,
        }
        if o.storage_class:
            args["StorageClass"] = o.storage_class
        if o.metadata:
            args["Metadata"] = dict(o.metadata)
        if o.content_disposition:
            args["ContentDisposition"] = o.content_disposition
        return args

    async def write(self, data: bytes) -> None:
        self._check()
        self._buffer += data
        self._size += len(data)
        size = self.options.part_size
        while len(self._buffer) >= size:
            part = bytes(memoryview(self._buffer)[:size])
            del self._buffer[:size]
            await self._submit(part)

    async def _submit(self, part: bytes) -> None:
        if self.upload_id is None:
            try:
                r = await self.s3.create_multipart_upload(**self._object_args())
            except Exception as exc:
                raise translate(exc, self.dest.url, "write") from exc
            self.upload_id = r["UploadId"]
            if self.options.on_upload:
                self.options.on_upload(r["UploadId"])
        await self._slots.acquire()
        self._check()
        number = len(self._parts) + len(self._tasks) + 1
        task = asyncio.create_task(self._upload(number, part))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload(self, number: int, part: bytes) -> None:
        try:
            r = await self.s3.upload_part(
                Bucket=self.dest.bucket,
                Key=self.dest.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=part,
            )
            self._parts[number] = r["ETag"]
        except BaseException as exc:
            if self._failure is None and not isinstance(exc, asyncio.CancelledError):
                self._failure = translate(exc, self.dest.url, "write")
            raise
        finally:
            self._slots.release()

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("the sink is closed")
        if self._failure is not None:
            raise self._failure

    async def commit(self) -> Published:
        self._check()
        try:
            if self.upload_id is None:
                r = await self.s3.put_object(Body=bytes(self._buffer), **self._object_args())
            else:
                if self._buffer:  # the final part may be smaller than the others
                    await self._submit(bytes(self._buffer))
                self._buffer = bytearray()
                await asyncio.gather(*self._tasks)
                self._check()
                parts = [{"PartNumber": n, "ETag": e} for n, e in sorted(self._parts.items())]
                r = await self.s3.complete_multipart_upload(
                    Bucket=self.dest.bucket,
                    Key=self.dest.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except Exception as exc:
            raise translate(exc, self.dest.url, "write") from exc
        self._closed = True
        return Published(self._size, r.get("ETag"), r.get("VersionId"), max(1, len(self._parts)))

    async def abort(self) -> None:
        """Cancel part uploads in flight, then abort the upload: no object, no parts left behind."""
        self._closed = True
        self._buffer = bytearray()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.upload_id is not None:
            await _abort(self.s3, self.dest.bucket, self.dest.key, self.upload_id)
