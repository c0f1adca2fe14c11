"""bucketzip: zip many S3 objects into one archive in S3, streamed, transactional, queued with Celery.

The producer API (``submit``, ``submit_many``, ``status``, ``wait``, ``retry``, ``cancel``, ``jobs``,
``archives``, or a ``Client`` of your own settings) is re-exported here; it loads Celery and redis, never s3fs
or the ZIP writer.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import (
    AccessDenied,
    BucketzipError,
    ConfigError,
    CredentialsError,
    EndpointError,
    InvalidJob,
    JobCancelled,
    JobStateError,
    JobTimedOut,
    LimitExceeded,
    RestorePending,
    SourceArchived,
    SourceChanged,
    SourceMissing,
    SourceUnreadable,
    TransientError,
    UnknownJob,
    UploadFailed,
)
from .spec import JobSpec

if TYPE_CHECKING:
    from .client import Batch, Client, JobHandle, archives, cancel, jobs, retry, status, submit, submit_many, wait
    from .registry import Job

__version__ = "0.1.0"

# The producer API loads Celery, kombu and redis: only when first used, so that `bucketzip run`, the engine and
# a plain `import bucketzip` stay light (PEP 562 module __getattr__).
_LAZY = {
    **dict.fromkeys(
        [
            "Batch",
            "Client",
            "JobHandle",
            "archives",
            "cancel",
            "jobs",
            "retry",
            "status",
            "submit",
            "submit_many",
            "wait",
        ],
        "client",
    ),
    "Job": "registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AccessDenied",
    "Batch",
    "BucketzipError",
    "Client",
    "ConfigError",
    "CredentialsError",
    "EndpointError",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobHandle",
    "JobSpec",
    "JobStateError",
    "JobTimedOut",
    "LimitExceeded",
    "RestorePending",
    "Settings",
    "SourceArchived",
    "SourceChanged",
    "SourceMissing",
    "SourceUnreadable",
    "TransientError",
    "UnknownJob",
    "UploadFailed",
    "__version__",
    "archives",
    "cancel",
    "jobs",
    "retry",
    "status",
    "submit",
    "submit_many",
    "wait",
]
