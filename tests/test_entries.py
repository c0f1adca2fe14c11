"""How entries are read before their headers, against a real S3 endpoint: a STORED entry's CRC-32 from S3's
full-object checksum (one read) or from a first read (two), never from a composite checksum; a checksum that
does not match the bytes fails the job and publishes nothing.

The store is S3Store itself, wrapped only to count the calls the engine makes to it.
"""

from __future__ import annotations

import base64
import io
import os
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import fsspec.asyn
import pytest
from boto3.s3.transfer import TransferConfig

from bucketzip.config import Settings
from bucketzip.engine import build_archive, run_sync
from bucketzip.errors import SourceChanged
from bucketzip.spec import JobSpec
from bucketzip.stores import ObjectInfo, Store, store_for
from bucketzip.stores.s3 import full_object_crc32
from tests.faultproxy import fault_proxy
from tests.helpers import fetch_archive, keys, open_uploads

MiB = 2**20
Put = Callable[[str, dict[str, bytes]], None]


class Counting:
    """The real store, counting per key its reads, the checksums its reads told (``told``) and its checksum
    look-ups (``checksums``: a HEAD each); ``lie`` makes every checksum wrong."""

    def __init__(self, inner: Store, lie: bool = False) -> None:
        self.inner, self.lie = inner, lie
        self.reads: Counter[str] = Counter()
        self.told: Counter[str] = Counter()
        self.checksums: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(
        self, obj: ObjectInfo, chunk_size: int, on_checksum: Callable[[int | None], None] | None = None
    ) -> AsyncIterator[bytes]:
        key = obj.location.key
        self.reads[key] += 1
        if on_checksum is None:
            return self.inner.read(obj, chunk_size)
        tell = on_checksum

        def told(crc: int | None) -> None:
            self.told[key] += 1
            tell(crc ^ 1 if crc is not None and self.lie else crc)

        return self.inner.read(obj, chunk_size, told)

    async def checksum(self, obj: ObjectInfo) -> int | None:
        self.checksums[obj.location.key] += 1
        crc = await self.inner.checksum(obj)
        return crc ^ 1 if crc is not None and self.lie else crc


def run(spec: dict[str, Any], settings: Settings, lie: bool = False) -> Counting:
    settings = settings.replace(chunk_size=128 * 2**10, read_buffer=2 * MiB)
    store = Counting(store_for("s3", settings), lie)
    run_sync(build_archive(JobSpec.from_dict(spec, settings), settings, stores=lambda protocol: store))
    return store


def stored_without_descriptor(zf: zipfile.ZipFile, name: str) -> bool:
    info = zf.getinfo(name)
    return info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x0008


def test_a_full_object_checksum_saves_the_second_read(
    make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    objects = {"in/photo.jpg": os.urandom(MiB), "in/noise.bin": os.urandom(MiB), "in/notes.txt": b"words " * 100_000}
    put(b, objects)  # boto3 sends a CRC-32 with each PUT, which S3 (and moto) keep
    store = run({"sources": [f"s3://{b}/in/"], "destination": f"s3://{b}/out.zip"}, settings)
    assert store.reads == {"in/photo.jpg": 1, "in/noise.bin": 1, "in/notes.txt": 1}
    # The GET says the checksum with the bytes: no HEAD per stored object.
    assert store.told["in/photo.jpg"] == 1 and store.told["in/noise.bin"] == 1
    assert store.checksums == {}
    zf = fetch_archive(s3, b, "out.zip", {k.removeprefix("in/"): v for k, v in objects.items()})
    assert stored_without_descriptor(zf, "photo.jpg") and stored_without_descriptor(zf, "noise.bin")
    assert zf.getinfo("notes.txt").compress_type == zipfile.ZIP_DEFLATED


def test_without_a_usable_checksum_a_stored_object_is_read_twice(
    make_bucket: Callable[[], str], s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    single, multi = os.urandom(MiB), os.urandom(6 * MiB)
    s3.put_object(Bucket=b, Key="in/single.bin", Body=single)
    # A multipart upload's checksum is COMPOSITE (a checksum of the parts' checksums): not the object's CRC-32.
    s3.upload_fileobj(io.BytesIO(multi), b, "in/multi.bin", Config=TransferConfig(multipart_threshold=5 * MiB))
    spec = {"sources": [f"s3://{b}/in/"], "destination": f"s3://{b}/out.zip", "compression": "store"}
    store = run(spec, settings)
    assert store.reads == {"in/single.bin": 1, "in/multi.bin": 2}
    zf = fetch_archive(s3, b, "out.zip", {"single.bin": single, "multi.bin": multi})
    assert stored_without_descriptor(zf, "multi.bin") and stored_without_descriptor(zf, "single.bin")

    store = run(spec, settings.replace(source_checksums=False))  # BUCKETZIP_SOURCE_CHECKSUMS=false
    assert store.reads == {"in/single.bin": 2, "in/multi.bin": 2}
    assert store.told == {}  # not even asked of the GETs
    fetch_archive(s3, b, "out.zip", {"single.bin": single, "multi.bin": multi})


def test_a_plain_object_source_gets_its_checksum_from_the_selections_head(
    make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    data = os.urandom(MiB)
    put(b, {"photo.jpg": data})
    store = run({"sources": [f"s3://{b}/photo.jpg"], "destination": f"s3://{b}/out.zip"}, settings)
    assert store.reads == {"photo.jpg": 1}
    zf = fetch_archive(s3, b, "out.zip", {"photo.jpg": data})
    assert stored_without_descriptor(zf, "photo.jpg")


def test_a_checksum_that_does_not_match_fails_the_job_and_writes_nothing(
    make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    put(b, {"in/a.txt": b"small", "in/photo.jpg": os.urandom(MiB)})
    with pytest.raises(SourceChanged, match="do not match the CRC-32") as info:
        run({"sources": [f"s3://{b}/in/"], "destination": f"s3://{b}/out.zip"}, settings, lie=True)
    assert info.value.url == f"s3://{b}/in/photo.jpg"
    assert keys(s3, b) == ["in/a.txt", "in/photo.jpg"] and open_uploads(s3, b) == []


def test_a_deflated_entry_is_checked_against_the_checksum_its_get_said(
    make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings
) -> None:
    """Under 'auto' an entry whose name does not decide its method asks its GET for the object's checksum, in
    case it is stored; when its first bytes compress it is deflated, and its bytes are still checked against
    that checksum (by the writer: botocore leaves it to us), so a mismatch fails the job."""
    b = make_bucket()
    text = b"the quick brown fox jumps over the lazy dog\n" * 20_000  # ~900 KB: several chunks, and it shrinks
    put(b, {"in/notes.log": text})
    spec = {"sources": [f"s3://{b}/in/"], "destination": f"s3://{b}/out.zip", "compression": "auto"}
    with pytest.raises(SourceChanged, match="do not match the CRC-32") as info:
        run(spec, settings, lie=True)
    assert info.value.url == f"s3://{b}/in/notes.log"
    assert keys(s3, b) == ["in/notes.log"] and open_uploads(s3, b) == []

    store = run(spec, settings)
    assert store.told == {"in/notes.log": 1} and store.reads == {"in/notes.log": 1}
    zf = fetch_archive(s3, b, "out.zip", {"notes.log": text})
    assert zf.getinfo("notes.log").compress_type == zipfile.ZIP_DEFLATED


@pytest.mark.parametrize(
    ("name", "method"), [("in/photo.bin", zipfile.ZIP_STORED), ("in/notes.log", zipfile.ZIP_DEFLATED)]
)
def test_bytes_damaged_on_the_way_fail_the_job_whether_stored_or_deflated(
    make_bucket: Callable[[], str], put: Put, s3: Any, moto_url: str, settings: Settings, name: str, method: int
) -> None:
    """One bit of a GET's body flipped between the store and us, its checksum header intact: the entry's
    CRC-32 does not match the store's checksum, so the job fails and publishes nothing. Undamaged, the same
    object is written with that method."""
    b = make_bucket()
    data = (
        os.urandom(MiB) if method == zipfile.ZIP_STORED else b"the quick brown fox jumps over the lazy dog\n" * 20_000
    )
    put(b, {name: data})
    spec = {"sources": [f"s3://{b}/in/"], "destination": f"s3://{b}/out.zip", "compression": "auto"}
    with fault_proxy(moto_url) as proxy:
        rule = proxy.add("get", "corrupt", bucket=b, key=name)
        with pytest.raises(SourceChanged, match="do not match") as info:
            run(spec, settings.replace(endpoint_url=proxy.url))
        assert rule.hits == 1
    assert info.value.url == f"s3://{b}/{name}"
    assert keys(s3, b) == [name] and open_uploads(s3, b) == []
    run(spec, settings)
    zf = fetch_archive(s3, b, "out.zip", {name.removeprefix("in/"): data})
    assert zf.getinfo(name.removeprefix("in/")).compress_type == method


def test_botocore_does_not_check_a_gets_body_a_second_time(
    make_bucket: Callable[[], str], put: Put, settings: Settings
) -> None:
    """The reads' client leaves the check of a body against the checksum its GET asked for to the caller,
    which computes each entry's CRC-32 anyway: botocore's own check was a second CRC-32 of every byte. If a
    botocore upgrade moves where it keeps that plan, this fails (and botocore checks again, only slower)."""
    b = make_bucket()
    put(b, {"a.bin": os.urandom(1000)})
    store = store_for("s3", settings)

    async def get() -> tuple[str, str | None]:
        s3c = await store.client(b)  # type: ignore[attr-defined]
        resp = await s3c.get_object(Bucket=b, Key="a.bin", ChecksumMode="ENABLED")
        resp["Body"].close()
        return type(resp["Body"]).__name__, resp.get("ChecksumCRC32")

    body, checksum = fsspec.asyn.sync(store.fs.loop, get)  # type: ignore[attr-defined]
    assert checksum is not None  # the GET still says the object's checksum
    assert "Checksum" not in body, body  # but botocore does not wrap the body to check it


def crc(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ({"ChecksumCRC32": crc(0x12345678), "ChecksumType": "FULL_OBJECT", "ETag": '"x-3"'}, 0x12345678),
        ({"ChecksumCRC32": crc(0x12345678), "ETag": '"0123abcd"'}, 0x12345678),  # one PUT, type unreported
        ({"ChecksumCRC32": crc(0x12345678), "ChecksumType": "COMPOSITE", "ETag": '"x-3"'}, None),
        ({"ChecksumCRC32": crc(0x12345678), "ETag": '"x-3"'}, None),  # multipart, type unreported (moto)
        ({"ChecksumCRC32": crc(0x12345678) + "-3"}, None),
        ({"ChecksumCRC32": "not base64!"}, None),
        ({"ChecksumCRC32": base64.b64encode(b"12345").decode()}, None),
        ({"ChecksumCRC32C": crc(1), "ChecksumType": "FULL_OBJECT"}, None),  # another algorithm
        ({}, None),
    ],
)
def test_only_a_full_object_crc32_is_taken(response: dict[str, str], expected: int | None) -> None:
    assert full_object_crc32(response) == expected
