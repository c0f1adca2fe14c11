"""Run one contender as its own process and measure it from outside: wall time and peak RSS.

``os.wait4`` hands back the child's own resource usage, so each process's peak RSS is its own and not the
harness's or an earlier run's (``RUSAGE_CHILDREN`` would only give the maximum over all of them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Measured:
    returncode: int
    seconds: float  # wall time, process start to exit
    peak_rss: int  # bytes
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def result(self) -> dict[str, Any]:
        """The JSON object a contender prints last on stdout."""
        for line in reversed(self.stdout.splitlines()):
            if line.strip().startswith("{"):
                return dict(json.loads(line))
        raise ValueError(f"no JSON result on stdout: {self.stdout[-500:]!r}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr.splitlines()[-lines:])


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float | None = None) -> Measured:
    """Run ``argv`` to completion; kill it after ``timeout`` seconds."""
    # Files, not pipes: nothing reads a pipe while we block in wait4, and a chatty child would stall on it.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=dict(env))
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.kill(proc.pid, signal.SIGKILL)  # not proc.kill(): its poll() could reap the child before wait4

        killer = threading.Timer(timeout, kill) if timeout else None
        if killer:
            killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if killer:
                killer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        return Measured(
            returncode=proc.returncode,
            seconds=seconds,
            peak_rss=usage.ru_maxrss * 1024,  # KiB on Linux
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=killed.is_set(),
        )
