"""The exception tree: one root, meaningful branches, and arguments that survive Celery's JSON result backend."""

from __future__ import annotations

import inspect
import json
import pickle

import celery
import pytest

import bucketzip
from bucketzip import errors
from bucketzip.errors import (
    AccessDenied,
    BucketzipError,
    ConfigError,
    InvalidJob,
    JobCancelled,
    LimitExceeded,
    SourceChanged,
    SourceMissing,
    TransientError,
    UploadFailed,
)

# One instance of every class, built as the code that raises it does.
SAMPLES: list[BucketzipError] = [
    ConfigError("BUCKETZIP_PART_SIZE", "1", "must be between 5242880 and 5368709120"),
    InvalidJob("sources[2].name", "../etc/passwd", "must not contain '..'"),
    LimitExceeded("sources", 100_001, "more than 100000 entries"),
    SourceMissing(["s3://photos/a.jpg", "s3://photos/b.jpg"]),
    SourceChanged("s3://photos/a.jpg", "it was overwritten or deleted after it was listed"),
    AccessDenied("s3://exports/out.zip", "write"),
    UploadFailed("s3://exports/out.zip", "the bucket does not exist"),
    JobCancelled("job-42"),
    TransientError("s3://photos/a.jpg", "SlowDown: Please reduce your request rate."),
]


def _all_classes() -> list[type[BucketzipError]]:
    return sorted(
        (c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BucketzipError)),
        key=lambda c: c.__name__,
    )


def _built(cls: type[BucketzipError]) -> BucketzipError:
    """An instance made from the constructor's signature, so a class added later is covered too."""
    args: list[object] = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        args.append(["s3://b/one", "s3://b/two"] if "list" in str(p.annotation) else f"<{p.name}>")
    return cls(*args)


@pytest.mark.parametrize("cls", _all_classes(), ids=lambda c: c.__name__)
def test_every_class_round_trips_through_its_args(cls: type[BucketzipError]) -> None:
    exc = _built(cls)
    decoded = json.loads(json.dumps(exc.args))
    rebuilt = cls(*decoded)
    assert type(rebuilt) is cls
    assert str(rebuilt) == str(exc)
    assert cls.__doc__, "every error class has a one-line docstring"


def test_tree() -> None:
    assert all(isinstance(e, BucketzipError) for e in SAMPLES)
    assert issubclass(InvalidJob, ValueError)  # callers that catch ValueError for bad input still work
    assert issubclass(LimitExceeded, InvalidJob)
    # Only TransientError is worth retrying; nothing else may be caught by a retry on it.
    assert [type(e) for e in SAMPLES if isinstance(e, TransientError)] == [TransientError]


def test_exported_from_the_package() -> None:
    for e in SAMPLES:
        assert getattr(bucketzip, type(e).__name__) is type(e)
        assert type(e).__name__ in bucketzip.__all__


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_args_rebuild_the_same_exception(exc: BucketzipError) -> None:
    # Celery's JSON backend stores (type name, args) and rebuilds with cls(*args).
    decoded = json.loads(json.dumps(exc.args))
    rebuilt = type(exc)(*decoded)
    assert str(rebuilt) == str(exc)
    assert list(rebuilt.args) == list(decoded)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc) and str(copy) == str(exc)


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_survives_celerys_json_result_backend(exc: BucketzipError) -> None:
    backend = celery.Celery("t", backend="cache+memory://", result_serializer="json").backend
    stored = json.loads(json.dumps(backend.prepare_exception(exc, "json")))
    rebuilt = backend.exception_to_python(stored)
    assert type(rebuilt) is type(exc)
    assert str(rebuilt) == str(exc)


def test_invalid_job_names_field_and_value() -> None:
    e = InvalidJob("compression", "zstd", "must be one of store, deflate, auto")
    assert str(e) == "invalid job: compression='zstd': must be one of store, deflate, auto"
    assert (e.field, e.value) == ("compression", "zstd")


def test_invalid_job_keeps_only_json_in_args() -> None:
    value = {"name": b"bytes", "n": (1, 2), 3: object()}
    e = InvalidJob("sources[0]", value, "must be a URL string")
    json.dumps(e.args)  # raises if anything is not JSON
    assert e.value is value  # the attribute keeps the original for callers in this process
    assert type(e)(*e.args).field == "sources[0]"


def test_long_values_are_shortened_in_the_message() -> None:
    e = InvalidJob("sources[0].name", "x" * 10_000, "too long")
    assert len(str(e)) < 300
    assert "sources[0].name" in str(e) and "'xxxx" in str(e)
    assert e.args[1] == "x" * 10_000  # but kept whole in args


def test_source_missing_lists_the_first_ten() -> None:
    urls = [f"s3://b/k{i}" for i in range(25)]
    text = str(SourceMissing(urls))
    assert text.startswith("25 source(s) not found: ")
    assert all(u in text for u in urls[:10]) and "s3://b/k10" not in text
    assert "and 15 more" in text
