"""Local stand-ins for the demo, the tests and the benchmark: an S3 endpoint (moto's server, in its own
process so that it never shares our GIL), a Redis server when one is installed but not running, and a Celery
worker process started as an operator would start one.

Nothing here is used by the worker or the producer; moto is a development dependency.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import IO, Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def moto_server(port: int | None = None) -> Iterator[str]:
    """Run ``moto.server`` on 127.0.0.1 in a child process; yield its endpoint URL; stop it after."""
    with moto_process(port) as (url, _):
        yield url


def stop(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM ``proc`` (a warm shutdown for a worker, SHUTDOWN for Redis) and wait; SIGKILL it if it is still
    there after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (a worker's pool processes), none if it is gone (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def moto_process(port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like ``moto_server``, but yield ``(url, process)`` too, e.g. to measure the server's CPU time."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    # moto keeps objects in SpooledTemporaryFiles; big ones spill to its own temp dir.
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}; is moto[server] installed?")
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on {url}") from None
                time.sleep(0.1)
        yield url, proc
    finally:
        stop(proc, 10)


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[str | None]:
    """Yield a Redis URL: 127.0.0.1:6379 when it answers, else a private ``redis-server`` when installed,
    else None (the caller falls back to an embedded broker)."""
    if port is None and port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    port = port or free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not port_open("127.0.0.1", port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def worker_process(
    env: dict[str, str], name: str, log: IO[bytes] | None = None, concurrency: int = 1, python: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A bucketzip.worker worker --pool=prefork -c 1`` (or ``-c concurrency``) in a child process with
    ``env`` added to ours, run by ``python`` (default: this interpreter); its output goes to ``log`` (or
    nowhere). Stopped with SIGTERM (a warm shutdown) after, killed if it hangs."""
    cmd = [python or sys.executable, "-m", "celery", "-A", "bucketzip.worker", "worker", "--pool=prefork"]
    cmd += ["-c", str(concurrency)]
    cmd += ["-n", f"{name}@%h", "--loglevel=INFO", "--without-mingle", "--without-gossip"]
    out = log if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc, 30)


@contextlib.contextmanager
def redis_process(port: int, directory: str, appendonly: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    """A private ``redis-server`` on ``port`` keeping its files in ``directory`` (with ``appendonly``, every
    write goes to the AOF at once, so a restart on the same port and directory loses nothing). Stopped with
    SHUTDOWN's signal (SIGTERM) after. For tests and benchmarks that restart Redis: never the shared one."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory]
    args += ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else ["--appendonly", "no"]
    proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port, 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield proc
    finally:
        stop(proc, 20)
