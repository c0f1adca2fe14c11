"""Glacier vaults (``glacier://VAULT``): a second kind of sink, with its own part sizing, results and janitor.

A vault archive is written as a multipart upload, as an S3 object is, but by the vault's rules: every part is
the same power of two MiB (1 MiB to 4 GiB; only the last may be smaller) at an offset that is a multiple of
it, sent with its SHA-256 tree hash; the upload is completed with the archive's size and tree hash, which is
computed from the parts' hashes (``treehash.combine``), so the data is hashed once, on its way out. The vault
answers with the archive id: vaults cannot list their archives quickly, so the catalog keeps it.

boto3's Glacier client (blocking) runs on a small thread pool, as the S3 sink's does. Any failure aborts the
upload; errors are translated by ``stores.base.translate`` (a vault's 4xx is permanent: the job fails at once).
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import math
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from ..config import MAX_PARTS, MiB, Settings
from ..errors import InvalidJob, LimitExceeded
from ..spec import Location
from .base import ObjectInfo, Published, SinkOptions, error_code, translate
from .parts import PartedSink, abort_retrying
from .treehash import combine, tree_hash

MIN_PART_SIZE = 1 * MiB  # a vault's smallest part size
MAX_PART_SIZE = 4 * 2**30  # and largest: 10,000 parts of 4 GiB make its largest archive, 40 TiB


def vault_part_size(configured: int, size_bound: int = 0) -> int:
    """``configured`` rounded up to a power of two MiB (8 MiB stays 8 MiB), raised so that an archive of
    ``size_bound`` bytes fits in MAX_PARTS parts. Raises LimitExceeded past 4 GiB parts (a 40 TiB archive)."""
    needed = max(configured, math.ceil(size_bound / MAX_PARTS), MIN_PART_SIZE)
    size = MiB << max(0, math.ceil(math.log2(math.ceil(needed / MiB))))
    if size > MAX_PART_SIZE:
        raise LimitExceeded("sources", size_bound, "the archive could exceed a Glacier vault's 40 TiB archive limit")
    return size


def _timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class GlacierStore:
    """Vaults as the engine and the janitor see them: a sink, the uploads in progress, retrieval jobs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.upload_concurrency + 1, thread_name_prefix="bucketzip-vault")
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """boto3's Glacier client (account ``-``: the credentials' own), made once; thread-safe."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                s = self.settings
                session = boto3.session.Session(**s.boto3_session_options())
                config = Config(
                    max_pool_connections=s.upload_concurrency + 4, retries={"mode": "standard", "max_attempts": 5}
                )
                self._client = session.client("glacier", endpoint_url=s.glacier_endpoint_url, config=config)
            return self._client

    async def call(self, url: str, operation: str, method: str, **kwargs: Any) -> Any:
        """``client.<method>(**kwargs)`` on the pool; errors translated for ``url``."""
        loop = asyncio.get_running_loop()
        try:
            client = await loop.run_in_executor(self.pool, self.client)
            return await loop.run_in_executor(self.pool, functools.partial(getattr(client, method), **kwargs))
        except Exception as exc:
            raise translate(exc, url, operation) from exc

    # --- the Store protocol: a vault is a destination only (the spec refuses it as a source) ---

    async def head(self, loc: Location) -> ObjectInfo | None:
        # The engine looks up a destination before writing it (was it published by an earlier run?): a vault
        # gives each archive a new id and cannot be asked about it, so there is never a prior archive.
        if not loc.key:
            return None
        raise InvalidJob("sources", loc.url, "a Glacier vault can only be a destination")

    async def list(self, loc: Location) -> AsyncIterator[ObjectInfo]:
        raise InvalidJob("sources", loc.url, "a Glacier vault can only be a destination")
        yield  # pragma: no cover

    async def checksum(self, obj: ObjectInfo) -> int | None:
        return None  # a vault is never a source

    async def read(
        self, obj: ObjectInfo, chunk_size: int, on_checksum: Callable[[int | None], None] | None = None
    ) -> AsyncIterator[bytes]:
        raise InvalidJob("sources", obj.location.url, "a Glacier vault can only be a destination")
        yield  # pragma: no cover

    async def presign(self, loc: Location, version_id: str | None, expires: int) -> str | None:
        return None  # a vault archive has no URL

    async def open_sink(self, dest: Location, options: SinkOptions) -> GlacierSink:
        part_size = vault_part_size(options.part_size)
        client = await asyncio.get_running_loop().run_in_executor(self.pool, self.client)
        return GlacierSink(client, self.pool, dest, options, part_size)

    async def complete_sealed(self, dest: Location, sealed: dict[str, Any]) -> Published | None:
        """Complete the upload a run sealed and may have completed before it died. Glacier answers a repeated
        Complete with the archive the first one made, for a while after it; an upload never completed is
        completed now. None once the vault no longer knows the upload: aborted (by the sweep), or completed
        too long ago to be repeated, in which case that archive stays unrecorded."""
        try:
            args = complete_args(dest.bucket, sealed)
            answer = await self.call(dest.url, "write", "complete_multipart_upload", **args)
        except Exception as exc:  # translated by ``call``: the vault's own error is its cause
            if error_code(exc.__cause__ or exc) == "ResourceNotFoundException":
                return None
            raise
        return published(sealed, answer)

    # --- the janitor ---

    async def list_uploads(self, vault: str) -> builtins.list[dict[str, Any]]:
        """The vault's multipart uploads in progress, as the sweeper reads S3's: UploadId, Key, Initiated."""
        out: builtins.list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"vaultName": vault}
        while True:
            page = await self.call(f"glacier://{vault}", "read", "list_multipart_uploads", **kwargs)
            for up in page.get("UploadsList", ()):
                out.append(
                    {"UploadId": up["MultipartUploadId"], "Key": "", "Initiated": _timestamp(up["CreationDate"])}
                )
            if not page.get("Marker"):
                return out
            kwargs["marker"] = page["Marker"]

    async def abort_upload(self, vault: str, key: str, upload_id: str) -> None:
        client = await asyncio.get_running_loop().run_in_executor(self.pool, self.client)
        await asyncio.get_running_loop().run_in_executor(self.pool, abort_upload, client, vault, upload_id)

    # --- retrieval jobs (``bucketzip retrieve``) ---

    async def retrievals(self, vault: str, archive_id: str) -> builtins.list[dict[str, Any]]:
        """The vault's retrieval jobs of ``archive_id`` not failed, newest first."""
        found: builtins.list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"vaultName": vault}
        while True:
            page = await self.call(f"glacier://{vault}", "read", "list_jobs", **kwargs)
            found += [
                j
                for j in page.get("JobList", ())
                if j.get("ArchiveId") == archive_id
                and j.get("Action") == "ArchiveRetrieval"
                and j.get("StatusCode") != "Failed"
            ]
            if not page.get("Marker"):
                return sorted(found, key=lambda j: j.get("CreationDate", ""), reverse=True)
            kwargs["marker"] = page["Marker"]

    async def start_retrieval(self, vault: str, archive_id: str, tier: str) -> str:
        params = {"Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": tier}
        url = f"glacier://{vault}/{archive_id}"
        r = await self.call(url, "read", "initiate_job", vaultName=vault, jobParameters=params)
        return str(r["jobId"])

    async def describe(self, vault: str, job_id: str) -> dict[str, Any]:
        r = await self.call(f"glacier://{vault}", "read", "describe_job", vaultName=vault, jobId=job_id)
        return {k: v for k, v in r.items() if k != "ResponseMetadata"}

    async def output(self, vault: str, job_id: str, chunk_size: int) -> AsyncIterator[bytes]:
        """A finished retrieval job's bytes, streamed in chunks of ``chunk_size``."""
        loop = asyncio.get_running_loop()
        url = f"glacier://{vault}"
        r = await self.call(url, "read", "get_job_output", vaultName=vault, jobId=job_id)
        body = r["body"]
        try:
            while True:
                try:
                    chunk = await loop.run_in_executor(self.pool, body.read, chunk_size)
                except Exception as exc:
                    raise translate(exc, url, "read") from exc
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()


def complete_args(vault: str, sealed: dict[str, Any]) -> dict[str, Any]:
    return {
        "vaultName": vault,
        "uploadId": sealed["upload_id"],
        "archiveSize": str(sealed["size"]),
        "checksum": sealed["tree_hash"],
    }


def published(sealed: dict[str, Any], answer: dict[str, Any]) -> Published:
    """What a vault's Complete of the ``sealed`` upload made."""
    return Published(
        sealed["size"],
        None,
        None,
        sealed["parts"],
        part_size=sealed["part_size"],
        archive_id=answer["archiveId"],
        tree_hash=answer.get("checksum") or sealed["tree_hash"],
    )


def abort_upload(client: Any, vault: str, upload_id: str) -> None:
    """Abort a vault upload (blocking), retrying; an upload already gone counts as aborted."""
    abort = functools.partial(client.abort_multipart_upload, vaultName=vault, uploadId=upload_id)
    abort_retrying(abort, frozenset({"ResourceNotFoundException", "404"}), f"glacier://{vault}")


class GlacierSink(PartedSink):
    """Cuts the stream into ``part_size`` parts and uploads ``concurrency`` at a time while the next fills;
    ``write`` waits while that many are in flight, bounding memory at about ``(concurrency + 2) * part_size``.
    Each part's tree hash is computed on the pool thread that uploads it. The upload is created with the
    first write, so an archive whose making fails before then leaves nothing to abort."""

    def __init__(
        self, client: Any, pool: ThreadPoolExecutor, dest: Location, options: SinkOptions, part_size: int
    ) -> None:
        super().__init__(pool, dest, part_size, options.concurrency, options.recycle)
        self.client, self.options = client, options
        self.vault = dest.bucket
        self._offset = 0  # where the next part starts
        self._hashes: dict[int, bytes] = {}  # part offset -> its tree hash
        self._sealed: dict[str, Any] | None = None

    async def _start(self) -> None:
        args: dict[str, Any] = {"vaultName": self.vault, "partSize": str(self.part_size)}
        if self.options.description:
            args["archiveDescription"] = self.options.description
        r = await self._call(self.client.initiate_multipart_upload, **args)
        self.upload_id = r["uploadId"]
        if self.options.on_upload:
            self.options.on_upload(r["uploadId"])

    async def _submit(self, part: bytes | bytearray) -> None:
        if self.upload_id is None:
            await self._start()
        offset = self._offset
        self._offset += len(part)
        await self._spawn(self._upload, offset, part)

    def _upload(self, offset: int, part: bytes | bytearray) -> None:  # on a pool thread
        part = bytes(part)  # botocore's Glacier handlers take bytes or a file, not a bytearray
        checksum = tree_hash(part)
        self.client.upload_multipart_part(
            vaultName=self.vault,
            uploadId=self.upload_id,
            range=f"bytes {offset}-{offset + len(part) - 1}/*",
            checksum=checksum.hex(),
            body=part,
        )
        self._hashes[offset] = checksum

    async def seal(self) -> dict[str, Any]:
        """Upload the last part and wait for every part: what is left for ``commit`` is the vault's Complete,
        which a later run can repeat from what this returns (``GlacierStore.complete_sealed``)."""
        if self._sealed is None:
            self._check()
            if self._buffer or self.upload_id is None:  # the last part may be smaller (or the only one)
                await self._submit(self._buffer)  # handed over: a new buffer replaces it
            self._buffer = bytearray()
            await self._parts_done()
            self._sealed = {
                "upload_id": self.upload_id,
                "size": self._size,
                "tree_hash": combine([self._hashes[o] for o in sorted(self._hashes)]).hex(),
                "parts": len(self._hashes),
                "part_size": self.part_size,
            }
        return self._sealed

    async def commit(self) -> Published:
        sealed = await self.seal()
        self._check()
        r = await self._call(self.client.complete_multipart_upload, **complete_args(self.vault, sealed))
        self._closed = True
        return published(sealed, r)

    async def abort(self) -> None:
        """Let part uploads in flight finish, then abort the vault upload: no archive, no parts left behind."""
        await self._stop_parts()
        if self.upload_id is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.pool, abort_upload, self.client, self.vault, self.upload_id)
