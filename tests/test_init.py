"""The package's public surface: every public name is in ``__all__`` and documented (httpx's test)."""

from __future__ import annotations

import subprocess
import sys
import types

import bucketzip


def test_all_exports_are_listed() -> None:
    public = {
        name
        for name, value in vars(bucketzip).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name not in ("TYPE_CHECKING", "Any")
    }
    assert public | set(bucketzip._LAZY) == set(bucketzip.__all__) - {"__version__"}


def test_import_does_not_load_the_queue() -> None:
    # The engine and `bucketzip run` never need Celery: the producer API loads it on first use.
    code = (
        "import sys, bucketzip, bucketzip.engine, bucketzip.cli\n"
        "assert 'celery' not in sys.modules and 'kombu' not in sys.modules, 'queue loaded'\n"
        "bucketzip.submit\n"
        "assert 'celery' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_export_exists_and_is_documented() -> None:
    for name in bucketzip.__all__:
        value = getattr(bucketzip, name)
        if name != "__version__":
            assert value.__doc__, f"{name} has no docstring"
            assert value.__module__.startswith("bucketzip."), name


def test_all_is_sorted() -> None:
    assert bucketzip.__all__ == sorted(bucketzip.__all__)
