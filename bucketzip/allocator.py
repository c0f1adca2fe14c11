"""The process's memory: glibc's allocator, tuned for a job's buffer churn (one arena, and free pages handed
back as a job goes), and Python's collector kept off what a process makes once to keep (``lasting``).

A job churns ~0.5 MiB chunks and 8 MiB parts through threads that all allocate (the IO loop, the ZIP stage,
the DEFLATE pool, the part uploads). glibc keeps what they free in its heap for reuse, so a process's RSS is
the high-water mark of its heap, holes included, not what it holds. Both functions are no-ops (False) where
the C library is not glibc.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

M_ARENA_MAX = -8  # glibc's mallopt() parameter number
_tuned = False
_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None)
    return _libc


def tune_allocator(arena_max: int) -> bool:
    """Limit glibc's malloc to ``arena_max`` arenas for this process (once; 0 leaves glibc's default).

    By default each thread that allocates gets its own arena (up to 8 per core), and the job's threads
    fragment each. Measured on a 500 MB job against moto: peak RSS 182 MiB with the default, 171 MiB with one
    arena, and no slower. (Serving large blocks straight from mmap instead, via M_MMAP_THRESHOLD, gave 155 MiB
    but cost 1 s of page faults; on a 200 MB job, a threshold under the chunk size cost 0.4-0.5 s of CPU in
    ~200,000 page faults.)
    """
    global _tuned
    if _tuned or arena_max <= 0:
        return False
    _tuned = True
    try:
        return bool(_c().mallopt(M_ARENA_MAX, arena_max))
    except (OSError, AttributeError):
        return False


def release_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc's ``malloc_trim``): RSS falls to what the process
    holds. A worker process does it after each job, so that its RSS between jobs is not the high-water mark of
    its largest job so far; a job does it after each part (``ZipStage``'s ``after_block``), so that its peak is
    not its live buffers plus the holes its earlier parts left (on a 200 MB job: 9 MiB lower, for ~30,000 more
    page faults, ~0.1 s of CPU on another thread)."""
    try:
        return bool(_c().malloc_trim(0))
    except (OSError, AttributeError):
        return False


@contextmanager
def lasting() -> Iterator[None]:
    """Collect nothing while the block runs, then leave what it made out of every later collection
    (``gc.freeze``): for what a process makes once and keeps to its end, such as the modules a cold run imports.

    A cold ``bucketzip run`` makes ~50,000 objects the collector tracks before its first request (the S3 SDKs'
    modules and clients), and the collector's ~200 passes among them, each finding next to nothing, took ~45 ms
    of it. A cycle that becomes garbage inside the block is never collected: wrap only what is meant to last."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
