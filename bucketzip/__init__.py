"""bucketzip: zip many S3 objects into one archive in S3, streamed, transactional, queued with Celery.

The producer API (``submit``, ``submit_many``, ``status``, ``wait``, ``retry``, ``cancel``, ``jobs``,
``archives``, or a ``Client`` of your own settings) is re-exported here; it loads Celery and redis, never s3fs
or the ZIP writer.
"""

from .client import (
    Batch,
    Client,
    JobHandle,
    archives,
    cancel,
    jobs,
    retry,
    status,
    submit,
    submit_many,
    wait,
)
from .config import Settings
from .errors import (
    AccessDenied,
    BucketzipError,
    ConfigError,
    InvalidJob,
    JobCancelled,
    JobStateError,
    LimitExceeded,
    SourceChanged,
    SourceMissing,
    SourceUnreadable,
    TransientError,
    UnknownJob,
    UploadFailed,
)
from .registry import Job
from .spec import JobSpec

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Batch",
    "BucketzipError",
    "Client",
    "ConfigError",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobHandle",
    "JobSpec",
    "JobStateError",
    "LimitExceeded",
    "Settings",
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
