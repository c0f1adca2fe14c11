"""A vault archive of a few hundred MB in constant memory: ``bucketzip run`` from S3 into ``glacier://VAULT``.

    python -m bench.vault                    # mixed corpus at scales 0.1 and 0.6 (50 MB and 300 MB in)
    python -m bench.vault --scales 0.6 --runs 3

Starts a private moto S3 server and the local vault server (tests/vaultserver.py: it checks every part's and
the archive's tree hash with botocore's ``calculate_tree_hash``) in their own processes, runs ``bucketzip run``
as a fresh process per run (peak RSS from ``os.wait4``, as the main benchmark measures it), then reads the
vault's stored archive with ``zipfile`` (every CRC) and ``unzip -t``. Prints one line per run and a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
import zipfile
from statistics import median

import boto3
from botocore.utils import calculate_tree_hash

from bench import corpus as corpora
from bench.measure import run
from bench.runner import child_env
from bucketzip.devserver import moto_process

MiB = 2**20


def vault_process(root: str, vault: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.vaultserver", "--root", root, "--vault", vault],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def check(path: str, entries: int, input_bytes: int) -> str:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None, "zipfile: a bad CRC"
        infos = [i for i in zf.infolist() if not i.is_dir()]
        assert len(infos) == entries and sum(i.file_size for i in infos) == input_bytes, "zipfile: wrong contents"
    r = subprocess.run(["unzip", "-tqq", path], capture_output=True, text=True)
    assert r.returncode == 0, f"unzip -t: {r.stdout[-500:]} {r.stderr[-500:]}"
    with open(path, "rb") as f:
        return calculate_tree_hash(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="0.1,0.6", help="mixed corpus scales (1.0 = 500 MB in)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-vault-") as root, moto_process() as (s3_url, _):
        vault = "bench"
        server, vault_url = vault_process(os.path.join(root, "vaults"), vault)
        try:
            s3 = boto3.client(
                "s3",
                endpoint_url=s3_url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            )
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(Bucket=bucket)
            env = {**child_env(s3_url, True), "AWS_ENDPOINT_URL_GLACIER": vault_url, "BUCKETZIP_RUN_CATALOG": "off"}
            for scale in [float(s) for s in args.scales.split(",")]:
                c = corpora.build("mixed", scale)
                corpora.upload(s3, bucket, c)
                spec = os.path.join(root, "job.json")
                with open(spec, "w") as f:
                    json.dump({"sources": [f"s3://{bucket}/{c.prefix}"], "destination": f"glacier://{vault}"}, f)
                times, peaks = [], []
                for i in range(args.runs):
                    m = run([sys.executable, "-m", "bucketzip", "run", "-q", spec], env, timeout=1800)
                    if not m.ok:
                        raise SystemExit(f"bucketzip run failed: {m.tail()}")
                    result = json.loads(m.stdout)
                    digest = hashlib.sha1(result["archive_id"].encode()).hexdigest()
                    path = os.path.join(root, "vaults", f"archive-{digest}")
                    tree = check(path, len(c.objects), c.input_bytes)
                    assert tree == result["tree_hash"], "the tree hash bucketzip reported is not the archive's"
                    os.unlink(path)
                    times.append(m.seconds)
                    peaks.append(m.peak_rss)
                    print(
                        f"scale {scale}: run {i + 1}: {m.seconds:.2f} s, peak RSS {m.peak_rss / MiB:.0f} MiB, "
                        f"archive {result['size'] / 1e6:.1f} MB in {result['parts']} parts of "
                        f"{result['part_size'] // MiB} MiB; zipfile, unzip -t and tree hash OK",
                        file=sys.stderr,
                        flush=True,
                    )
                rows.append((c.input_bytes, result["size"], len(c.objects), median(times), max(peaks)))
                corpora.delete(s3, bucket, c.prefix)
        finally:
            server.terminate()
            server.wait()
    print("| input MB | archive MB | entries | median s | input MB/s | peak RSS MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for size_in, size_out, entries, seconds, peak in rows:
        print(
            f"| {size_in / 1e6:.0f} | {size_out / 1e6:.0f} | {entries} | {seconds:.2f} | "
            f"{size_in / 1e6 / seconds:.1f} | {peak / MiB:.0f} |"
        )


if __name__ == "__main__":
    main()
