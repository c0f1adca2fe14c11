"""Run one contender as its own process and measure it from outside: wall time, peak RSS and CPU time.

The peak comes from ``os.wait4``, the child's own rusage. Linux folds the pre-exec address space's high-water
mark into ``ru_maxrss``, so a child forked straight from this harness (hundreds of MiB after generating the
corpus) would report at least our size. A tiny launcher therefore starts first, and the contender is forked
from *it*: the floor becomes the launcher's ~10 MiB. The launcher times the child and reports both on a pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_LAUNCHER = """
import json, os, sys, time
fd, argv = int(sys.argv[1]), sys.argv[2:]
os.set_inheritable(fd, False)
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
report = [
    os.waitstatus_to_exitcode(status),
    time.perf_counter() - started,
    usage.ru_maxrss * 1024,
    usage.ru_utime + usage.ru_stime,
]
os.write(fd, json.dumps(report).encode())
"""


@dataclass
class Measured:
    returncode: int
    seconds: float  # wall time, the contender's start to its exit
    peak_rss: int  # bytes
    stdout: str
    stderr: str
    timed_out: bool = False
    cpu: float | None = None  # seconds of CPU, user and system, the contender's threads and children

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def result(self) -> dict[str, Any]:
        """The JSON object a contender prints on stdout: all of it, or its last line."""
        lines = self.stdout.strip().splitlines() or [""]
        for text in (self.stdout, lines[-1]):
            try:
                return dict(json.loads(text))
            except ValueError:
                continue
        raise ValueError(f"no JSON result on stdout: {self.stdout[-500:]!r}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr.splitlines()[-lines:])


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float | None = None) -> Measured:
    """Run ``argv`` to completion; kill it (and its launcher) after ``timeout`` seconds."""
    read_end, write_end = os.pipe()
    # Files, not pipes, for the output: nothing drains a pipe while we wait, and a chatty child would stall.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, os.fdopen(read_end, "rb") as report:
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(write_end), *argv]
        # A session of its own makes one process group: a timeout kills the contender, not just the launcher.
        proc = subprocess.Popen(
            launcher,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            pass_fds=(write_end,),
            start_new_session=True,
        )
        os.close(write_end)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            with contextlib.suppress(ProcessLookupError):  # it may have ended as the timer fired
                os.killpg(proc.pid, signal.SIGKILL)

        killer = threading.Timer(timeout, kill) if timeout else None
        if killer:
            killer.start()
        try:
            proc.wait()
        finally:
            if killer:
                killer.cancel()
        raw = report.read()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if not raw:  # the launcher itself died: killed, or could not start the contender
        return Measured(proc.returncode or -1, 0.0, 0, stdout, stderr, timed_out=killed.is_set())
    code, seconds, peak, cpu = json.loads(raw)
    return Measured(code, seconds, peak, stdout, stderr, timed_out=killed.is_set(), cpu=cpu)
