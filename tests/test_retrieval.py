"""Getting archives back (retrieval.py, cli_archives.py) as a user does it - ``bucketzip run`` into a vault,
``bucketzip retrieve``, ``bucketzip restore`` - in subprocesses against the vault server, moto and Redis."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from botocore.utils import calculate_tree_hash

from bucketzip.catalog import Catalog
from bucketzip.config import Settings
from tests.helpers import check_zip_file, fetch_archive


def bz(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        [sys.executable, "-m", "bucketzip", *args], env=full, capture_output=True, text=True, timeout=120
    )


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> None:
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith("bucketzip: error:") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_run_into_a_vault_then_retrieve(
    s3: Any, make_bucket: Any, vaults: Any, s3_env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    bucket, out = make_bucket(), make_bucket()
    files = {f"f{i}.txt": os.urandom(1000) + b"x" * 200_000 for i in range(3)}
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"in/{name}", Body=data)
    env = {
        **s3_env,
        "AWS_ENDPOINT_URL_GLACIER": vaults.url,
        "BUCKETZIP_REDIS_URL": redis_url,
        "BUCKETZIP_KEY_PREFIX": queue_prefix,
        "BUCKETZIP_RUN_CATALOG": "auto",
    }
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}"}))

    made = bz("run", "-q", str(spec), env=env)
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    data = vaults.archive_bytes(result["archive_id"])
    assert result["tree_hash"] == calculate_tree_hash(io.BytesIO(data))
    # bucketzip run recorded it, as a worker would have
    assert "recorded in the catalog" in made.stderr
    [record] = Catalog(Settings.from_env(env)).search(vault=vaults.vault)
    url = record["url"]
    assert url == f"glacier://{vaults.vault}/{result['archive_id']}" and record["tree_hash"] == result["tree_hash"]
    assert record["size"] == len(data) and record["entries"] == 3 and record["description"].startswith("bucketzip ")

    target = tmp_path / "back.zip"
    first = bz("retrieve", url, "--to", str(target), "--tier", "Bulk", env=env)
    assert first.returncode == 75, first.stderr  # the vault's job runs for hours: not ready yet
    status = json.loads(first.stdout)
    assert status["started"] and status["status"] == "InProgress" and not target.exists()
    assert vaults.jobs[status["job_id"]].tier == "Bulk"

    plain = bz("retrieve", url, env=env)  # no --to: report the status, exit 0
    assert plain.returncode == 0 and json.loads(plain.stdout)["job_id"] == status["job_id"]

    vaults.finish_jobs()
    done = bz("retrieve", url, "--to", str(target), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"] == str(target) and not json.loads(done.stdout)["started"]
    assert vaults.calls["initiate_job"] == 1  # the job started first is found again, not started twice
    check_zip_file(str(target), files)
    assert target.read_bytes() == data

    to_s3 = bz("retrieve", url, "--to", f"s3://{out}/restored/back.zip", env=env)
    assert to_s3.returncode == 0, to_s3.stderr
    fetch_archive(s3, out, "restored/back.zip", files)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial files left

    one_line_error(bz("retrieve", f"glacier://{vaults.vault}/NO-SUCH-ARCHIVE", env=env), 1)
    one_line_error(bz("retrieve", "glacier://just-a-vault", env=env), 2)
    one_line_error(bz("retrieve", url, "--to", "ftp://x/y", env=env), 2)


def test_retrieve_checks_the_tree_hash(vaults: Any, s3_env: dict[str, str], tmp_path: Path) -> None:
    from tests.vaultserver import Archive

    path = tmp_path / "stored"
    path.write_bytes(b"the archive's bytes")
    vaults.archives["A1"] = Archive("A1", vaults.vault, 19, "00" * 32, None, str(path))  # a wrong hash on record
    vaults.jobs_finish_at_once = True
    env = {**s3_env, "AWS_ENDPOINT_URL_GLACIER": vaults.url, "BUCKETZIP_RUN_CATALOG": "off"}
    target = tmp_path / "out.bin"
    r = bz("retrieve", f"glacier://{vaults.vault}/A1", "--to", str(target), env=env)
    one_line_error(r, 1)
    assert "tree hash" in r.stderr and not target.exists()


def test_restore_command(s3: Any, make_bucket: Any, s3_env: dict[str, str]) -> None:
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="old.zip", Body=b"zip", StorageClass="DEEP_ARCHIVE")
    s3.put_object(Bucket=bucket, Key="hot.zip", Body=b"zip")

    r = bz("restore", f"s3://{bucket}/old.zip", "--days", "3", "--tier", "Bulk", env=s3_env)
    assert r.returncode == 0 and "restore requested (Bulk, 3 day(s))" in r.stdout
    head = s3.head_object(Bucket=bucket, Key="old.zip")
    assert 'ongoing-request="false"' in head["Restore"]  # moto restores at once
    again = bz("restore", f"s3://{bucket}/old.zip", env=s3_env)
    assert again.returncode == 0 and "restored: it can be read now" in again.stdout
    assert "not in an archive class" in bz("restore", f"s3://{bucket}/hot.zip", env=s3_env).stdout

    one_line_error(bz("restore", f"s3://{bucket}/missing.zip", env=s3_env), 1)
    one_line_error(bz("restore", f"s3://{bucket}/", env=s3_env), 2)
    bad_tier = bz("restore", f"s3://{bucket}/old.zip", "--tier", "Fast", env=s3_env)
    assert bad_tier.returncode == 2 and "Traceback" not in bad_tier.stderr
