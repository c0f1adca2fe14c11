"""The storage backends, one family: each protocol maps to the factory of its store, registered here.

``store_for(protocol, settings)`` gives the one store of that protocol for this process. A backend module is
imported only when its protocol is first used, so a producer that only enqueues never loads s3fs or boto3.
``glacier`` (vaults, destinations only) is ``stores.glacier``. Any protocol without a backend of its own falls
back to fsspec (``stores.fs``), which the spec layer allows only where ``BUCKETZIP_ALLOWED_PROTOCOLS`` says so.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ..config import Settings
from .base import (
    ARCHIVED_CLASSES,
    Archival,
    ObjectInfo,
    Published,
    RestoreState,
    Sink,
    SinkOptions,
    Store,
    error_code,
    translate,
)

__all__ = [
    "ARCHIVED_CLASSES",
    "Archival",
    "ObjectInfo",
    "Published",
    "RestoreState",
    "Sink",
    "SinkOptions",
    "Store",
    "error_code",
    "register",
    "store_for",
    "translate",
]

Factory = Callable[[str, Settings], Store]

_backends: dict[str, Factory] = {}


def register(protocol: str, factory: Factory) -> None:
    """Make ``factory(protocol, settings)`` the maker of ``protocol``'s store."""
    _backends[protocol] = factory


def _s3(protocol: str, settings: Settings) -> Store:
    from .s3 import S3Store

    return S3Store(settings)


def _glacier(protocol: str, settings: Settings) -> Store:
    from .glacier import GlacierStore

    return GlacierStore(settings)


def _fsspec(protocol: str, settings: Settings) -> Store:
    from .fs import FsStore

    return FsStore(protocol)


register("s3", _s3)
register("glacier", _glacier)

_stores: dict[tuple[int, str, Settings], Store] = {}
_stores_lock = threading.Lock()


def store_for(protocol: str, settings: Settings) -> Store:
    """The store for ``protocol``, made once per process (fsspec's async filesystems are not fork-safe, so
    a store made in a parent is never reused in a forked child)."""
    key = (os.getpid(), protocol, settings)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = _backends.get(protocol, _fsspec)(protocol, settings)
        return store
