"""The baseline: what a careful user writes first with s3fs and ``zipfile``. One object after another, the
compressor in this process, the archive streamed through s3fs's buffered writer.

    python -m bench.naive --endpoint URL --out s3://bucket/archive.zip --keys-file keys.txt [s3://b/k ...]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive")
    parser.add_argument("--endpoint", help="S3 endpoint URL")
    parser.add_argument("--out", required=True, help="s3://bucket/key of the archive")
    parser.add_argument("--keys-file", help="file of s3://bucket/key lines (20,000 keys do not fit argv)")
    parser.add_argument("keys", nargs="*", help="s3://bucket/key of each object")
    args = parser.parse_args(argv)
    keys = list(args.keys)
    if args.keys_file:
        with open(args.keys_file) as f:
            keys += [line.strip() for line in f if line.strip()]

    started = time.perf_counter()
    fs = s3fs.S3FileSystem(endpoint_url=args.endpoint)
    input_bytes = 0
    with (
        fs.open(args.out, "wb") as out,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf,
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
    result = {
        "destination": args.out,
        "entries": len(keys),
        "input_bytes": input_bytes,
        "duration": time.perf_counter() - started,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
