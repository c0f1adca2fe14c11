"""Loaded by ``bench.startup`` into a cold ``bucketzip run`` (via PYTHONPATH): stamps the process's first
connection (its first request), the CPU it had used by then, and the garbage collections before it, and writes
them as one JSON line to the file BENCH_STAMP names when the process's exit handlers run."""

import gc
import json
import os
import sys
import time

_path = os.environ.get("BENCH_STAMP")
_t0 = time.perf_counter()
_seen: dict[str, float] = {}
_gc = {"ms": 0.0, "n": 0.0, "since": 0.0}


def _collecting(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc["since"] = time.perf_counter()
    else:
        _gc["ms"] += (time.perf_counter() - _gc["since"]) * 1000
        _gc["n"] += 1


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.connect" and "first_request_ms" not in _seen:
        _seen["first_request_ms"] = (time.perf_counter() - _t0) * 1000
        _seen["cpu_before_ms"] = time.process_time() * 1000
        _seen["gc_before_ms"] = _gc["ms"]
        _seen["gc_before_n"] = _gc["n"]


def _write() -> None:
    _seen["exit_ms"] = (time.perf_counter() - _t0) * 1000
    with open(_path, "a") as f:  # type: ignore[arg-type]
        f.write(json.dumps(_seen) + "\n")


if _path:
    import atexit

    gc.callbacks.append(_collecting)
    sys.addaudithook(_audit)
    atexit.register(_write)
