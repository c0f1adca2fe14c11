"""Every CLI failure is one line on stderr and a non-zero exit, never a traceback; ``check`` keeps its timeout.

The commands run as a user runs them, ``python -m bucketzip ...`` in a subprocess, against services that are
not there: a closed port (connection refused) and a silent one (accepts, never answers).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bucketzip.cli import main
from bucketzip.cli_errors import describe
from bucketzip.devserver import free_port, worker_process
from tests.conftest import MIDWAY, held_env
from tests.faultproxy import holding

SECRET = "hunter2-pw"  # a password in a service URL: never printed


def bucketzip(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETZIP_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "bucketzip", *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(r: Any) -> str:
    """The run failed with exactly one line on stderr, and no traceback; that line."""
    assert r.returncode != 0 if hasattr(r, "returncode") else r.exit_code != 0
    err = r.stderr
    assert "Traceback" not in err and SECRET not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bucketzip: error: ")
    return lines[0]


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them, up to the backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


def test_batch_of_a_file_that_is_not_there(tmp_path: Path) -> None:
    r = bucketzip("batch", str(tmp_path / "nosuch.jsonl"), env={})
    line = one_line_error(r)
    assert r.returncode == 2
    assert f"JOBS.jsonl='{tmp_path / 'nosuch.jsonl'}': cannot be read: No such file or directory" in line


def test_submit_with_redis_unreachable(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"sources": ["s3://bkt/a"], "destination": "s3://bkt/a.zip"}))
    port = free_port()
    r = bucketzip("submit", str(spec), env={"BUCKETZIP_REDIS_URL": f"redis://default:{SECRET}@127.0.0.1:{port}/0"})
    line = one_line_error(r)
    assert r.returncode == 1
    assert f"Redis did not answer (BUCKETZIP_REDIS_URL=redis://default:**@127.0.0.1:{port}/0)" in line
    assert "Connection refused" in line


@pytest.mark.parametrize(
    "args",
    [
        ("status", "j1"),
        ("jobs",),
        ("watch", "j1"),
        ("cancel", "j1"),
        ("retry", "j1"),
        ("retry", "--all-failed"),
        ("archives",),
    ],
    ids=lambda a: " ".join(a),
)
def test_every_queue_command_with_redis_unreachable(args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKETZIP_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:{free_port()}/0")
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)  # an exception escaping would fail here
    assert r.exit_code == 1
    assert "Redis did not answer" in one_line_error(r)


def test_a_broker_that_does_not_answer_is_named(tmp_path: Path, redis_url: str, queue_prefix: str) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"sources": ["s3://bkt/a"], "destination": "s3://bkt/a.zip"}))
    broker = f"amqp://guest:{SECRET}@127.0.0.1:{free_port()}//"
    env = {"BUCKETZIP_REDIS_URL": redis_url, "BUCKETZIP_KEY_PREFIX": queue_prefix, "BUCKETZIP_BROKER_URL": broker}
    line = one_line_error(bucketzip("submit", str(spec), env=env))
    assert "the broker did not answer (BUCKETZIP_BROKER_URL=amqp://guest:**@127.0.0.1:" in line


def test_an_unexpected_error_is_still_one_line() -> None:
    assert describe(KeyError("x")) == "unexpected KeyError: 'x'"
    assert describe(RuntimeError()) == "unexpected RuntimeError: RuntimeError"


@pytest.mark.parametrize("kind", ["silent", "closed"])
def test_check_keeps_its_timeout_for_every_service(kind: str) -> None:
    """Broker, result backend, registry and S3 all pointed at a port that never answers (or refuses): the
    check reports each and returns within its timeout, not after botocore's retries or Redis's wait."""
    timeout, services, slack = 2, 4, 6.0  # slack: the interpreter's start-up on a busy machine
    with silent_port() as silent:
        port = silent if kind == "silent" else free_port()
        env = {
            "BUCKETZIP_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "BUCKETZIP_BROKER_URL": f"redis://127.0.0.1:{port}/1",
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
        started = time.monotonic()
        r = bucketzip("check", "--timeout", str(timeout), env=env, timeout=60)
        elapsed = time.monotonic() - started
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    names = [line.split("FAIL")[0].strip() for line in r.stdout.splitlines()]
    assert names == ["broker", "result backend", "registry", "s3"], r.stdout
    assert elapsed < timeout * services + slack, f"check --timeout {timeout} took {elapsed:.1f}s"
    if kind == "closed":  # refused at once: each says so, rather than "no answer"
        assert r.stdout.count("Connection refused") == 3 and "cannot reach the S3 endpoint" in r.stdout, r.stdout


def test_submit_wait_past_the_soft_time_limit(
    tmp_path: Path,
    s3: Any,
    make_bucket: Any,
    big_corpus: Any,
    moto_url: str,
    s3_env: dict[str, str],
    redis_url: str,
    queue_prefix: str,
) -> None:
    bucket, _ = big_corpus
    out = make_bucket()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"sources": [f"s3://{bucket}/in/"], "destination": f"s3://{out}/out.zip"}))
    # The GET of one object midway waits until the test ends: the job outlasts its one-second limit for sure.
    with holding(moto_url, "get", bucket, MIDWAY) as (endpoint, _):
        env = held_env(
            s3_env, redis_url, queue_prefix, endpoint, BUCKETZIP_JOB_SOFT_TIME_LIMIT="1", BUCKETZIP_JOB_TIME_LIMIT="60"
        )
        with worker_process(env, f"limit-cli-{queue_prefix}"):
            r = bucketzip("submit", str(spec), "--wait", "--timeout", "120", env=env, timeout=180)
    line = one_line_error(r)
    assert r.returncode == 1
    job_id = r.stdout.strip()
    assert line == (
        f"bucketzip: error: job {job_id} ran past its time limit: its soft time limit of 1s "
        "(BUCKETZIP_JOB_SOFT_TIME_LIMIT, by default just under BUCKETZIP_JOB_TIME_LIMIT) was reached; "
        "its upload was aborted"
    )
