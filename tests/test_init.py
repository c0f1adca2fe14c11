"""The package's public surface: every public name is in ``__all__`` and documented (httpx's test)."""

from __future__ import annotations

import types

import bucketzip


def test_all_exports_are_listed() -> None:
    public = {
        name
        for name, value in vars(bucketzip).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(bucketzip.__all__) - {"__version__"}


def test_every_export_exists_and_is_documented() -> None:
    for name in bucketzip.__all__:
        value = getattr(bucketzip, name)
        if name != "__version__":
            assert value.__doc__, f"{name} has no docstring"
            assert value.__module__.startswith("bucketzip."), name


def test_all_is_sorted() -> None:
    assert bucketzip.__all__ == sorted(bucketzip.__all__)
