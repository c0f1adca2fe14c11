"""The queue commands of the CLI, against real Redis, the moto server and a real embedded worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bucketzip.cli import main
from bucketzip.registry import FAILED, QUEUED
from tests.conftest import queue_env
from tests.helpers import fetch_archive


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> dict[str, str]:
    env = queue_env(s3_env, redis_url, queue_prefix)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_spec(tmp_path: Path, spec: dict[str, Any], name: str = "spec.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return str(path)


def test_submit_wait_progress_status_archives(
    cli_env: Any, worker: Any, s3: Any, make_bucket: Any, tmp_path: Path
) -> None:
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    spec = write_spec(tmp_path, {"sources": [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/a.zip"})
    r = invoke("submit", spec, "--progress")
    assert r.exit_code == 0, r.output
    job_id, _, rest = r.stdout.partition("\n")
    assert json.loads(rest)["entries"] == 1
    fetch_archive(s3, bucket, "a.zip", {"a.txt": b"alpha"})

    r = invoke("status", job_id, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["state"] == "succeeded"
    r = invoke("status", job_id)
    assert "succeeded" in r.stdout and "attempt 1, runs 1" in r.stdout
    r = invoke("archives", "--json")
    assert [a["job_id"] for a in json.loads(r.stdout)] == [job_id]
    assert f"s3://{bucket}/a.zip" in invoke("archives").stdout
    r = invoke("watch", job_id)
    assert r.exit_code == 0 and "succeeded" in r.stderr


def test_submit_rejects_an_invalid_spec(cli_env: Any, tmp_path: Path) -> None:
    r = invoke("submit", write_spec(tmp_path, {"sources": [], "destination": "s3://bkt/a.zip"}))
    assert r.exit_code == 2 and "invalid job: sources=[]" in r.stderr
    assert invoke("jobs", "--json").stdout.strip() == "[]"


def test_failed_jobs_listed_retried_and_cancelled(
    cli_env: Any, worker: Any, s3: Any, make_bucket: Any, tmp_path: Path
) -> None:
    bucket = make_bucket()
    spec = write_spec(tmp_path, {"sources": [f"s3://{bucket}/missing.txt"], "destination": f"s3://{bucket}/m.zip"})
    r = invoke("submit", spec, "--wait")
    assert r.exit_code == 1 and f"1 source(s) not found: s3://{bucket}/missing.txt" in r.stderr
    job_id = r.stdout.strip()
    r = invoke("jobs", "--state", "failed")
    assert job_id in r.stdout and "SourceMissing" in r.stdout
    assert [j["id"] for j in json.loads(invoke("jobs", "--state", "failed", "--json").stdout)] == [job_id]

    s3.put_object(Bucket=bucket, Key="missing.txt", Body=b"found")
    r = invoke("retry", "--all-failed")
    assert r.exit_code == 0 and "1 job(s) retried" in r.stderr
    new_id = r.stdout.strip()
    r = invoke("watch", new_id)
    assert r.exit_code == 0
    assert json.loads(invoke("status", new_id, "--json").stdout)["retry_of"] == job_id
    fetch_archive(s3, bucket, "m.zip", {"missing.txt": b"found"})
    r = invoke("retry", new_id)
    assert r.exit_code == 1 and "only a failed or cancelled job can be retried" in r.stderr
    assert invoke("retry").exit_code == 2  # neither an ID nor --all-failed

    r = invoke("cancel", new_id)
    assert r.stdout.strip() == "succeeded"  # already over: nothing to cancel
    r = invoke("cancel", "no-such-job")
    assert r.exit_code == 1 and "no job 'no-such-job' is recorded" in r.stderr


def test_cancel_a_queued_job(cli_env: Any, tmp_path: Path) -> None:
    job_id = invoke("submit", write_spec(tmp_path, {"sources": ["s3://bkt/a"], "destination": "s3://bkt/a.zip"})).stdout
    assert invoke("cancel", job_id.strip()).stdout.strip() == "cancelled"
    assert json.loads(invoke("status", job_id.strip(), "--json").stdout)["state"] == "cancelled"


def test_batch_enqueues_valid_lines_and_reports_the_others(cli_env: Any, tmp_path: Path) -> None:
    lines = [
        json.dumps({"sources": ["s3://bkt/a"], "destination": "s3://bkt/1.zip"}),
        "{not json",
        json.dumps({"sources": ["s3://bkt/a"], "destination": "s3://bkt/3.zip"}),
        "",
        json.dumps({"sources": ["s3://bkt/a"], "destination": "s3://bkt/"}),
        json.dumps({"sources": ["s3://bkt/a"], "destination": "s3://bkt/6.zip"}),
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    r = invoke("batch", str(path), "--batch-size", "2")
    assert r.exit_code == 1
    accepted = [line.split() for line in r.stdout.splitlines()]
    assert [int(n) for n, _ in accepted] == [1, 3, 6]
    assert "line 2: invalid job: spec=" in r.stderr and "is not valid JSON" in r.stderr
    assert "line 5: invalid job: destination='s3://bkt/': must name an object" in r.stderr
    assert "3 accepted, 2 invalid" in r.stderr
    assert {j["id"] for j in json.loads(invoke("jobs", "--state", QUEUED, "--json").stdout)} == {i for _, i in accepted}


def test_batch_throughput(cli_env: dict[str, str], tmp_path: Path) -> None:
    """Measured, not asserted: ``bucketzip batch`` of 5,000 lines, as a real command (no worker running)."""
    path = tmp_path / "jobs.jsonl"
    with path.open("w") as f:
        for i in range(5000):
            f.write(json.dumps({"sources": ["s3://bkt/a"], "destination": f"s3://bkt/{i}.zip"}) + "\n")
    started = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "bucketzip", "batch", str(path), "-q"],
        env={**os.environ, **cli_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 5000
    print(f"\nbucketzip batch: 5000 lines in {elapsed:.2f}s with start-up; its own report: {r.stderr.strip()}")


def test_check(cli_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    r = invoke("check")
    assert r.exit_code == 0, r.output
    assert [line.split()[-1] for line in r.stdout.splitlines()] == ["ok"] * 4
    monkeypatch.setenv("BUCKETZIP_BROKER_URL", "redis://127.0.0.1:1/0")
    r = invoke("check", "--timeout", "1")
    assert r.exit_code == 1 and "broker          FAIL" in r.stdout


def test_failed_state_listing_is_empty_at_first(cli_env: Any) -> None:
    assert invoke("jobs", "--state", FAILED).stdout == ""
