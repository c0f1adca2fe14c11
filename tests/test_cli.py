"""``bucketzip run SPEC.json`` as a user runs it: a subprocess, the result on stdout, progress on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fetch_archive, keys, open_uploads

Put = Callable[[str, dict[str, bytes]], None]


def bucketzip(
    env: dict[str, str], *args: str, stdin: str | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bucketzip", *args],
        env={**env, "PATH": os.environ["PATH"], **extra_env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def source(make_bucket: Callable[[], str], put: Put) -> tuple[str, dict[str, bytes]]:
    b = make_bucket()
    objects = {"docs/a.txt": b"alpha\n" * 50_000, "docs/b.bin": os.urandom(300_000), "docs/日本.txt": b"x"}
    put(b, objects)
    return b, objects


def write_spec(tmp_path: Path, spec: dict[str, Any]) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return str(path)


def test_run(tmp_path: Path, source: tuple[str, dict[str, bytes]], s3: Any, s3_env: dict[str, str]) -> None:
    b, objects = source
    spec = {"sources": [{"url": f"s3://{b}/docs/", "name": "files"}], "destination": f"s3://{b}/out/x.zip"}
    r = bucketzip(s3_env, "run", write_spec(tmp_path, spec), BUCKETZIP_PROGRESS_INTERVAL="0")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # stdout is the result and nothing else
    head = s3.head_object(Bucket=b, Key="out/x.zip")
    assert result["destination"] == f"s3://{b}/out/x.zip"
    assert (result["size"], result["etag"]) == (head["ContentLength"], head["ETag"])
    assert result["entries"] == 3 and result["input_bytes"] == sum(len(v) for v in objects.values())
    fetch_archive(s3, b, "out/x.zip", {f"files/{k.removeprefix('docs/')}": v for k, v in objects.items()})
    progress = r.stderr.strip().splitlines()
    assert progress, "progress goes to stderr"
    assert progress[-1].startswith("3/3 files")


def test_run_reads_stdin_and_quiet(source: tuple[str, dict[str, bytes]], s3: Any, s3_env: dict[str, str]) -> None:
    b, objects = source
    spec = {"sources": [f"s3://{b}/docs/a.txt"], "destination": f"s3://{b}/stdin.zip", "job_id": "from-stdin"}
    r = bucketzip(s3_env, "run", "--quiet", "-", stdin=json.dumps(spec))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["job_id"] == "from-stdin"
    assert r.stderr == ""
    fetch_archive(s3, b, "stdin.zip", {"docs/a.txt": objects["docs/a.txt"]})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"compression": "zstd"}, "compression='zstd'"),
        ({"sources": [{"url": "s3://BUCKET/x", "name": "a"}]}, "sources[0].url='s3://BUCKET/x'"),
        ({"sources": [{"url": "s3://bucket/x", "name": "../../etc/passwd"}]}, "sources[0].name='../../etc/passwd'"),
        ({"sources": ["file:///etc/passwd"]}, "sources[0]='file:///etc/passwd'"),
    ],
)
def test_invalid_spec_exits_2_with_one_line(
    tmp_path: Path, make_bucket: Callable[[], str], s3: Any, s3_env: dict[str, str], change: dict[str, Any], named: str
) -> None:
    b = make_bucket()
    spec = {"sources": [f"s3://{b}/x"], "destination": f"s3://{b}/out.zip", **change}
    r = bucketzip(s3_env, "run", write_spec(tmp_path, spec))
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("bucketzip: error: invalid job: ") and named in lines[0]
    assert keys(s3, b) == [] and open_uploads(s3, b) == []


def test_unreadable_spec_exits_2(tmp_path: Path, s3_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    for path in (str(bad), str(tmp_path / "absent.json")):
        r = bucketzip(s3_env, "run", path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "spec" in lines[0] and path in lines[0], r.stderr


def test_bad_setting_exits_2(tmp_path: Path, s3_env: dict[str, str]) -> None:
    spec = {"sources": ["s3://bkt/x"], "destination": "s3://bkt/out.zip"}
    r = bucketzip(s3_env, "run", write_spec(tmp_path, spec), BUCKETZIP_PART_SIZE="1MiB")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "bucketzip: error: setting BUCKETZIP_PART_SIZE='1048576': must be between 5242880 and 5368709120"
    ]


def test_missing_object_exits_1_naming_it(
    tmp_path: Path, source: tuple[str, dict[str, bytes]], s3: Any, s3_env: dict[str, str]
) -> None:
    b, objects = source
    spec = {"sources": [f"s3://{b}/docs/a.txt", f"s3://{b}/docs/gone.txt"], "destination": f"s3://{b}/out.zip"}
    r = bucketzip(s3_env, "run", write_spec(tmp_path, spec))
    assert r.returncode == 1
    assert r.stdout == ""
    assert f"s3://{b}/docs/gone.txt" in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(keys(s3, b)) == sorted(objects) and open_uploads(s3, b) == []


LEAVING = """
import atexit, sys

class Late:
    def __del__(self):
        print("torn down", flush=True)

late = Late()  # freed in the interpreter's teardown, if there is one
atexit.register(lambda: print("exit handlers ran", flush=True))
sys.argv = ["bucketzip", *sys.argv[1:]]
from bucketzip.cli import entry
entry()
"""


@pytest.mark.parametrize(("args", "code", "shown"), [(["--help"], 0, "Usage:"), (["run", "/no/such.json"], 2, "")])
def test_the_program_leaves_without_the_interpreters_teardown(args: list[str], code: int, shown: str) -> None:
    """Once a command is done the program flushes its output, runs the exit handlers and ends, keeping the
    exit code, without the teardown that freed the SDKs' objects (~140 ms after `run` printed its result)."""
    r = subprocess.run([sys.executable, "-c", LEAVING, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == code, r.stderr
    assert shown in r.stdout
    assert "exit handlers ran" in r.stdout
    assert "torn down" not in r.stdout
    if code:
        assert r.stderr.startswith("bucketzip: error:") and r.stderr.count("\n") == 1, r.stderr


COLD_START = """
import gc, json, sys
from bucketzip import engine, stores

seen = {}
real_run_job = engine.run_job

def run_job(spec, settings, *args, **kwargs):  # what is there as the job starts
    store = stores._stores.get((__import__("os").getpid(), "s3", settings))
    seen["stores"] = sorted(protocol for _, protocol, _ in stores._stores)
    seen["clients"] = store is not None and store._boto is not None and store.fs._s3 is not None
    seen["collecting"] = gc.isenabled()
    return real_run_job(spec, settings, *args, **kwargs)

engine.run_job = run_job
from bucketzip.cli import main
main(["run", "-q", sys.argv[1]], standalone_mode=False)
import aiobotocore.session
tracked = {id(o) for o in gc.get_objects()}
seen["sdk_collected"] = id(vars(aiobotocore.session)) in tracked
seen["frozen"] = gc.get_freeze_count()
print(json.dumps(seen))
"""


def test_a_cold_run_makes_its_stores_before_its_job_and_leaves_them_to_no_collection(
    tmp_path: Path, source: tuple[str, dict[str, bytes]], s3: Any, s3_env: dict[str, str]
) -> None:
    """`run` imports the SDKs and makes the clients of the stores its job uses (only those) before the job, with
    the collector off, then freezes all of it: ~200 collections among those objects were ~45 ms of a cold run."""
    b, objects = source
    spec = write_spec(tmp_path, {"sources": [f"s3://{b}/docs/"], "destination": f"s3://{b}/out/cold.zip"})
    env = {**s3_env, "PATH": os.environ["PATH"]}
    r = subprocess.run([sys.executable, "-c", COLD_START, spec], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["stores"] == ["s3"]  # glacier is allowed too, but this job does not use it
    assert seen["clients"] is True
    assert seen["collecting"] is True
    assert seen["sdk_collected"] is False
    assert seen["frozen"] > 20_000
    fetch_archive(s3, b, "out/cold.zip", {k.removeprefix("docs/"): v for k, v in objects.items()})
