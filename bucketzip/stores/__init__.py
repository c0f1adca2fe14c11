"""The storage backends, one family: each protocol maps to the factory of its store, registered here.

``store_for(protocol, settings)`` gives the one store of that protocol for this process. A backend module is
imported only when its protocol is first used, so a producer that only enqueues never loads s3fs or boto3. A
worker does it sooner: ``preload`` imports the backends before it forks its pool, and each pool process ``warm``s
its stores, clients included, as it starts, so that its first job does not pay for them (~0.6 s).
``glacier`` (vaults, destinations only) is ``stores.glacier``. Any protocol without a backend of its own falls
back to fsspec (``stores.fs``), which the spec layer allows only where ``BUCKETZIP_ALLOWED_PROTOCOLS`` says so.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterable

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
    "preload",
    "register",
    "store_for",
    "translate",
    "warm",
]

Factory = Callable[[str, Settings], Store]

_backends: dict[str, Factory] = {}
_imports: dict[str, tuple[str, ...]] = {}


def register(protocol: str, factory: Factory, imports: tuple[str, ...] = ()) -> None:
    """Make ``factory(protocol, settings)`` the maker of ``protocol``'s store, which runs on the modules
    ``imports`` names (its own first)."""
    _backends[protocol] = factory
    _imports[protocol] = imports


def _s3(protocol: str, settings: Settings) -> Store:
    from .s3 import S3Store

    return S3Store(settings)


def _glacier(protocol: str, settings: Settings) -> Store:
    from .glacier import GlacierStore

    return GlacierStore(settings)


def _fsspec(protocol: str, settings: Settings) -> Store:
    from .fs import FsStore

    return FsStore(protocol)


register("s3", _s3, ("bucketzip.stores.s3", "aiobotocore.session", "s3fs"))
register("glacier", _glacier, ("bucketzip.stores.glacier", "boto3"))

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


def preload(settings: Settings) -> None:
    """Import the backends of the protocols ``settings`` allows, and what they run on, making nothing (no
    client, thread or event loop, so a fork after it is safe). A worker does this before it forks its pool:
    its processes then start with these modules, shared with it, instead of each importing them (~0.4 s)."""
    for protocol in sorted(settings.allowed_protocols & _imports.keys()):
        for module in _imports[protocol]:
            importlib.import_module(module)


def warm(settings: Settings, protocols: Iterable[str] | None = None) -> None:
    """Make this process's stores for ``protocols`` (default: every protocol ``settings`` allows), and their
    clients, before a job asks for them: what a pool process does as it starts, and a cold run before its job.
    Blocks; sends no request. A store whose clients fail here makes them again when a job uses it, and that job
    meets the error."""
    wanted = settings.allowed_protocols if protocols is None else settings.allowed_protocols & set(protocols)
    for protocol in sorted(wanted & _backends.keys()):
        store = store_for(protocol, settings)
        make_clients = getattr(store, "warm", None)  # only stores whose clients cost something to make
        if make_clients is not None:
            make_clients()
