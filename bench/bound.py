"""The storage's limit on the same server: how fast it can serve every source object and, measured apart, take
an archive's worth of bytes. No archiver can beat the slower of the two.

    python -m bench.bound --endpoint URL --keys-file keys.txt --write-to s3://bucket/key --write-bytes N

Reads are whole-object GETs, READERS at a time, bodies streamed and dropped. The write is a multipart upload
of bytes already in memory, PART_SIZE parts with WRITERS in flight (bucketzip's defaults), completed and then
deleted; an archive that fits in one part is one PUT. Prints a JSON summary on stdout. With ``--serve`` it
stays up (one client, its connections warm) and answers one JSON request a line on stdin, for bench.warm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

MiB = 2**20
READERS = 16
WRITERS = 3
PART_SIZE = 8 * MiB


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def read_all(s3: Any, urls: list[str]) -> int:
    def get(url: str) -> int:
        bucket, key = _split(url)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        return sum(len(chunk) for chunk in body.iter_chunks(MiB))

    with ThreadPoolExecutor(READERS) as pool:
        return sum(pool.map(get, urls))


def write(s3: Any, url: str, size: int) -> float:
    """Upload ``size`` bytes to ``url``; return the seconds CompleteMultipartUpload took (the server joins the
    parts into one object then, after the last byte is sent: moto copies the whole archive)."""
    bucket, key = _split(url)
    part = os.urandom(PART_SIZE)
    if size <= PART_SIZE:  # what fits in one part is one PUT (as bucketzip does): no upload to complete
        s3.put_object(Bucket=bucket, Key=key, Body=part[:size])
        return 0.0
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def put(number: int) -> dict[str, Any]:
        start = (number - 1) * PART_SIZE
        body = part if size - start >= PART_SIZE else part[: size - start]
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": r["ETag"]}

    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            parts = list(pool.map(put, range(1, max(1, -(-size // PART_SIZE)) + 1)))
        started = time.perf_counter()
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        return time.perf_counter() - started
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def measure(s3: Any, urls: list[str], write_to: str, write_bytes: int) -> dict[str, Any]:
    started = time.perf_counter()
    read_bytes = read_all(s3, urls)
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    complete_seconds = write(s3, write_to, write_bytes)
    write_seconds = time.perf_counter() - started
    s3.delete_object(Bucket=_split(write_to)[0], Key=_split(write_to)[1])
    return {
        "objects": len(urls),
        "read_bytes": read_bytes,
        "read_seconds": read_seconds,
        "write_bytes": write_bytes,
        "write_seconds": write_seconds,
        "complete_seconds": complete_seconds,
        "duration": max(read_seconds, write_seconds),
    }


def read_keys(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bound")
    parser.add_argument("--endpoint", help="S3 endpoint URL")
    parser.add_argument("--keys-file", help="file of s3://bucket/key lines to read")
    parser.add_argument("--write-to", help="s3://bucket/key to write, then delete")
    parser.add_argument("--write-bytes", type=int, help="how many bytes to write")
    parser.add_argument(
        "--serve",
        action="store_true",
        help='warm: one client for many requests, JSON lines on stdin ({"keys_file", "write_to", "write_bytes"})',
    )
    args = parser.parse_args(argv)
    config = Config(max_pool_connections=READERS + WRITERS, retries={"mode": "standard"})
    s3 = boto3.client("s3", endpoint_url=args.endpoint, config=config)
    if args.serve:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            r = json.loads(line)
            print(json.dumps(measure(s3, read_keys(r["keys_file"]), r["write_to"], r["write_bytes"])), flush=True)
        return 0
    if not (args.keys_file and args.write_to and args.write_bytes is not None):
        parser.error("--keys-file, --write-to and --write-bytes are required")
    print(json.dumps(measure(s3, read_keys(args.keys_file), args.write_to, args.write_bytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
