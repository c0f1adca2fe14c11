"""The baseline: what a careful user writes first with s3fs and ``zipfile``. One object after another, the
compressor in this process, the archive streamed through s3fs's buffered writer.

    python -m bench.naive --endpoint URL --out s3://bucket/archive.zip --keys-file keys.txt [s3://b/k ...]
    python -m bench.naive --endpoint URL --serve      # warm: JSON requests on stdin, one result line each

Entry names are the keys (the path after the bucket). Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import zipfile

import s3fs


def archive(fs: s3fs.S3FileSystem, keys: list[str], out: str) -> dict[str, object]:
    """Zip ``keys`` (s3:// URLs) into ``out``; return the JSON summary."""
    started = time.perf_counter()
    input_bytes = 0
    with (
        fs.open(out, "wb") as dest,
        zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf,
    ):
        for url in keys:
            info = fs.info(url)
            name = url.removeprefix("s3://").split("/", 1)[1]
            entry = zipfile.ZipInfo(name, info["LastModified"].timetuple()[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED  # a bare ZipInfo would be STORED; level: zlib's 6
            # A streamed member's size is unknown to zipfile: it needs telling when ZIP64 will be needed.
            with (
                fs.open(url, "rb") as src,
                zf.open(entry, "w", force_zip64=info["size"] >= zipfile.ZIP64_LIMIT) as dst,
            ):
                shutil.copyfileobj(src, dst)
            input_bytes += info["size"]
    return {
        "destination": out,
        "entries": len(keys),
        "input_bytes": input_bytes,
        "duration": time.perf_counter() - started,
    }


def read_keys(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def serve(endpoint: str | None) -> int:
    """The warm variant: one process, one filesystem (its client and connections), many jobs. Reads one JSON
    request a line on stdin (``{"keys_file": ..., "out": ...}``) and answers each with a JSON line on stdout."""
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        fs.invalidate_cache()  # a user's long-lived process lists afresh for every job
        print(json.dumps(archive(fs, read_keys(request["keys_file"]), request["out"])), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive")
    parser.add_argument("--endpoint", help="S3 endpoint URL")
    parser.add_argument("--out", help="s3://bucket/key of the archive")
    parser.add_argument("--keys-file", help="file of s3://bucket/key lines (20,000 keys do not fit argv)")
    parser.add_argument("--serve", action="store_true", help="stay up and take jobs as JSON lines on stdin")
    parser.add_argument("keys", nargs="*", help="s3://bucket/key of each object")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.endpoint)
    if not args.out:
        parser.error("--out is required")
    keys = list(args.keys) + (read_keys(args.keys_file) if args.keys_file else [])
    fs = s3fs.S3FileSystem(endpoint_url=args.endpoint)
    print(json.dumps(archive(fs, keys, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
