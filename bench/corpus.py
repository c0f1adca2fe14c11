"""The benchmark's inputs: deterministic corpora, their content, and getting them into (and out of) S3.

Every object's bytes are a pure function of its key, so two runs (or two machines) benchmark the same data.
Text is the compressible kind: words sampled from a fixed vocabulary once into a few MiB, then sliced at a
per-object offset. Repeats are farther apart than DEFLATE's 32 KiB window, so the ratio stays that of text.
"""

from __future__ import annotations

import functools
import io
import math
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from boto3.s3.transfer import TransferConfig

KiB = 2**10
MiB = 2**20
CHUNK = 8 * MiB  # generation granularity: bounds the harness's memory per object being uploaded
PUT_LIMIT = 64 * MiB  # larger objects go up as streamed multipart uploads
TEXT_BASE = 4 * MiB

CORPORA = ("tiny", "twenty", "medium", "mixed", "small", "large", "large4g", "small100")
DEFAULT = ("mixed", "small")
# Sizes users send most (a web app's "download these 20 photos", a folder of a few hundred MB): name ->
# (objects, total bytes, largest object). Half text, half random, like mixed.
SPREAD = {
    "tiny": (20, 5 * 10**6, 1 * 10**6),
    "twenty": (20, 20 * 10**6, 3 * 10**6),
    "medium": (100, 200 * 10**6, 30 * 10**6),
    "mixed": (200, 500 * 10**6, 60 * 10**6),
}


@dataclass(frozen=True)
class Obj:
    key: str
    size: int
    kind: str  # "text" or "random"


@dataclass(frozen=True)
class Corpus:
    name: str
    prefix: str  # every object's key starts with it; ends with "/"
    objects: tuple[Obj, ...]
    rss_only: bool = False  # exists to compare bucketzip's peak RSS; other contenders only on request

    @property
    def input_bytes(self) -> int:
        return sum(o.size for o in self.objects)


def build(name: str, scale: float = 1.0) -> Corpus:
    """The corpus called ``name``; ``scale`` shrinks its bytes (or, for the small-object ones, its count)."""
    rng = random.Random(name)
    kinds: tuple[str, ...] = ("random", "text")
    if name in SPREAD:
        count, total, largest = SPREAD[name]
        lo = KiB if count >= 100 else 64 * KiB  # the small ones: photos and documents, not 1 KiB notes
        sizes = _spread(count, lo, int(largest * scale), int(total * scale))
        # Alternate kinds over the sorted sizes so both span the whole range, then shuffle key order.
        pairs = [(s, kinds[i % 2]) for i, s in enumerate(sorted(sizes))]
        rng.shuffle(pairs)
        objs = [Obj(f"{name}/{i:03d}.{_ext(k)}", s, k) for i, (s, k) in enumerate(pairs)]
        return Corpus(name, name + "/", tuple(objs))
    if name == "small":
        count = max(10, int(20_000 * scale))
        objs = [
            Obj(f"{name}/{i:05d}.{_ext(kinds[i % 2])}", rng.randint(KiB, 8 * KiB), kinds[i % 2]) for i in range(count)
        ]
        return Corpus(name, name + "/", tuple(objs))
    if name == "small100":
        # 100 entries carrying the same bytes as 'small''s 20,000 (~92 MB), so that comparing their peak RSS
        # isolates what an entry costs from what the archive's size costs (part buffers, read-ahead).
        total = build("small", scale).input_bytes
        objs = [Obj(f"{name}/{i:03d}.{_ext(kinds[i % 2])}", total // 100, kinds[i % 2]) for i in range(100)]
        return Corpus(name, name + "/", tuple(objs), rss_only=True)
    if name == "large":
        # One object, at most 2 GB: moto holds it and reads all of it for every GET.
        return Corpus(name, "large/", (Obj("large/big.txt", int(2 * 10**9 * scale), "text"),))
    if name == "large4g":
        # An archive past 4 GiB (ZIP64 offsets) from 6 GB of input in objects of 1 GB (moto holds them): four
        # random (stored, 4 GB) and two text (~0.7 GB after DEFLATE), ~4.7 GB of archive in all.
        kinds = ("text", "random", "random", "text", "random", "random")
        objs = [
            Obj(f"large4g/part-{i:02d}.{'txt' if kind == 'text' else 'bin'}", int(1e9 * scale), kind)
            for i, kind in enumerate(kinds)
        ]
        return Corpus(name, "large4g/", tuple(objs), rss_only=True)
    raise ValueError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")


def _ext(kind: str) -> str:
    return "txt" if kind == "text" else "bin"


def _spread(n: int, lo: int, hi: int, total: int) -> list[int]:
    """``n`` sizes from ``lo`` to ``hi``, log-spaced and skewed by ``u**p`` so that they sum to ``total``."""
    if total <= n * lo:
        return [lo] * n
    hi = max(lo, min(hi, total // 2))

    def sizes(p: float) -> list[int]:
        return [int(lo * (hi / lo) ** ((i / (n - 1)) ** p)) for i in range(n)]

    a, b = 0.01, 100.0  # the sum falls as p grows: bisect on p
    for _ in range(60):
        mid = math.sqrt(a * b)
        a, b = (mid, b) if sum(sizes(mid)) > total else (a, mid)
    return sizes(b)


@functools.cache
def _text_base() -> bytes:
    rng = random.Random("bucketzip-bench-text")
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = ["".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(2, 11))) for _ in range(8000)]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]  # Zipf, like natural text
    words = rng.choices(vocab, weights=weights, k=TEXT_BASE // 5)
    lines = (" ".join(words[i : i + 12]) for i in range(0, len(words), 12))
    text = ("\n".join(lines) + "\n").encode()
    return (text * 2)[:TEXT_BASE]


def content(obj: Obj) -> Iterator[bytes | memoryview]:
    """The object's bytes, in chunks of at most ``CHUNK``."""
    rng = random.Random(obj.key)
    if obj.kind == "random":
        for start in range(0, obj.size, CHUNK):
            yield rng.randbytes(min(CHUNK, obj.size - start))
        return
    base = _text_base()
    doubled = memoryview(base + base)
    offset = rng.randrange(len(base))
    remaining = obj.size
    while remaining:
        take = min(remaining, len(base), CHUNK)
        yield doubled[offset : offset + take]
        offset = (offset + take) % len(base)
        remaining -= take


class _Stream(io.RawIOBase):
    """A readable file over a chunk iterator, so boto3 can stream a multi-GB object without holding it."""

    def __init__(self, chunks: Iterator[bytes | memoryview]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def upload(s3: Any, bucket: str, corpus: Corpus, threads: int = 8) -> bool:
    """Put the corpus in ``bucket`` unless it is already there with the same sizes; True if it uploaded."""
    if existing(s3, bucket, corpus.prefix) == {o.key: o.size for o in corpus.objects}:
        return False
    delete(s3, bucket, corpus.prefix)
    big = TransferConfig(multipart_chunksize=PUT_LIMIT, max_concurrency=4)

    def put(obj: Obj) -> None:
        if obj.size <= PUT_LIMIT:
            s3.put_object(Bucket=bucket, Key=obj.key, Body=b"".join(content(obj)))
        else:
            stream = io.BufferedReader(_Stream(content(obj)), buffer_size=CHUNK)
            s3.upload_fileobj(stream, bucket, obj.key, Config=big)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, corpus.objects))
    return True


def existing(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", ())}


def delete(s3: Any, bucket: str, prefix: str) -> None:
    """Delete every object under ``prefix`` and abort open multipart uploads: moto holds both in memory."""
    keys = list(existing(s3, bucket, prefix))
    for i in range(0, len(keys), 1000):  # DeleteObjects' limit
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", ())
    for u in uploads:
        s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
