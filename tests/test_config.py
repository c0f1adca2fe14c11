"""Settings: built from a mapping, the AWS SDK's own variables, binary sizes, and errors that name the variable."""

from __future__ import annotations

import pytest

from bucketzip.config import MAX_PART_SIZE, MIN_PART_SIZE, Settings, usable_cpus
from bucketzip.errors import ConfigError

MiB = 2**20


def test_defaults_are_valid_and_conservative() -> None:
    s = Settings.from_env({})
    assert MIN_PART_SIZE <= s.part_size <= MAX_PART_SIZE
    # only s3:// may be read (glacier:// vaults are destinations only) unless an operator widens it
    assert s.allowed_protocols == frozenset({"s3", "glacier"})
    assert s.allowed_buckets == frozenset() and s.allowed_destination_buckets == frozenset()
    assert s.endpoint_url is None and s.access_key_id is None
    assert s.deflate_threads == min(4, usable_cpus()) >= 1, "one DEFLATE thread per usable CPU, at most 4"


def test_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKETZIP_PART_SIZE", "not a size")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://from-os-environ")
    s = Settings.from_env({"BUCKETZIP_MAX_ENTRIES": "7"})
    assert s.max_entries == 7
    assert s.endpoint_url is None
    # ... and os.environ when given nothing.
    with pytest.raises(ConfigError, match="BUCKETZIP_PART_SIZE"):
        Settings.from_env()


def test_aws_sdk_variables() -> None:
    s = Settings.from_env(
        {
            "AWS_ENDPOINT_URL": "http://generic",
            "AWS_ENDPOINT_URL_S3": "http://s3-specific",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_PROFILE": "prod",
            "AWS_ACCESS_KEY_ID": "AKID",
            "AWS_SECRET_ACCESS_KEY": "SECRET",
            "AWS_SESSION_TOKEN": "TOKEN",
        }
    )
    assert s.endpoint_url == "http://s3-specific"  # the service-specific variable wins, as in botocore
    assert s.region == "eu-west-1"
    opts = s.s3_options()
    assert opts["endpoint_url"] == "http://s3-specific"
    assert opts["client_kwargs"] == {"region_name": "eu-west-1"}
    assert (opts["key"], opts["secret"], opts["token"], opts["profile"]) == ("AKID", "SECRET", "TOKEN", "prod")
    # Credentials never appear in a repr (settings end up in logs).
    assert "SECRET" not in repr(s) and "TOKEN" not in repr(s) and "AKID" not in repr(s)


def test_empty_variables_fall_through() -> None:
    s = Settings.from_env({"AWS_ENDPOINT_URL_S3": "", "AWS_ENDPOINT_URL": "http://generic", "AWS_REGION": ""})
    assert s.endpoint_url == "http://generic"
    assert s.region is None


def test_unset_values_are_left_to_botocore() -> None:
    opts = Settings.from_env({"AWS_ACCESS_KEY_ID": "only-half"}).s3_options()
    assert opts == {"client_kwargs": {}}  # a key without its secret is not passed on


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16777216", 16 * MiB),
        ("16MiB", 16 * MiB),
        ("16M", 16 * MiB),
        ("16mb", 16 * MiB),
        ("1.5GiB", 3 * 2**29),
        ("8192K", 8 * MiB),
    ],
)
def test_sizes_in_binary_units(text: str, expected: int) -> None:
    assert Settings.from_env({"BUCKETZIP_PART_SIZE": text}).part_size == expected


def test_lists_and_booleans() -> None:
    s = Settings.from_env(
        {
            "BUCKETZIP_ALLOWED_BUCKETS": " photos, logs,,docs ",
            "BUCKETZIP_ALLOWED_PROTOCOLS": "s3,file",
            "BUCKETZIP_TASK_EVENTS": "off",
        }
    )
    assert s.allowed_buckets == frozenset({"photos", "logs", "docs"})
    assert s.allowed_protocols == frozenset({"s3", "file"})
    assert s.task_events is False
    assert Settings.from_env({"BUCKETZIP_TASK_EVENTS": "yes"}).task_events is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUCKETZIP_MAX_ENTRIES", "lots"),
        ("BUCKETZIP_PART_SIZE", "8 parsecs"),
        ("BUCKETZIP_TASK_EVENTS", "maybe"),
        ("BUCKETZIP_PROGRESS_INTERVAL", "soon"),
    ],
)
def test_unparseable_value_names_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert (info.value.variable, info.value.value) == (variable, value)
    assert variable in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUCKETZIP_PART_SIZE", str(MIN_PART_SIZE - 1)),  # S3 rejects smaller non-final parts
        ("BUCKETZIP_PART_SIZE", str(MAX_PART_SIZE + 1)),
        ("BUCKETZIP_COMPRESSION_LEVEL", "10"),
        ("BUCKETZIP_COMPRESSION_LEVEL", "-1"),
        ("BUCKETZIP_READ_CONCURRENCY", "0"),
        ("BUCKETZIP_UPLOAD_CONCURRENCY", "0"),
        ("BUCKETZIP_DEFLATE_THREADS", "0"),
        ("BUCKETZIP_MAX_ENTRIES", "0"),
        ("BUCKETZIP_MAX_KEYS_LISTED", "0"),
        ("BUCKETZIP_LOCK_TTL", "0"),
        ("BUCKETZIP_CHUNK_SIZE", "1000"),
        ("BUCKETZIP_READ_BUFFER", "65536"),  # smaller than the default 512 KiB chunk
        ("BUCKETZIP_PRESIGN_EXPIRES_TEMPORARY", "0"),
        ("BUCKETZIP_PRESIGN_EXPIRES_TEMPORARY", str(7 * 24 * 3600 + 1)),  # past BUCKETZIP_MAX_PRESIGN_EXPIRES
    ],
)
def test_out_of_range_value_names_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    assert variable in str(info.value) and value in str(info.value)


def test_boundaries_are_accepted() -> None:
    s = Settings.from_env({"BUCKETZIP_PART_SIZE": str(MIN_PART_SIZE), "BUCKETZIP_COMPRESSION_LEVEL": "0"})
    assert (s.part_size, s.compression_level) == (MIN_PART_SIZE, 0)
    s = Settings.from_env({"BUCKETZIP_CHUNK_SIZE": "64KiB", "BUCKETZIP_READ_BUFFER": "64KiB"})
    assert s.chunk_size == s.read_buffer == 64 * 2**10


def test_overrides_win_and_are_validated() -> None:
    s = Settings.from_env({"BUCKETZIP_MAX_ENTRIES": "7"}, max_entries=9)
    assert s.max_entries == 9
    with pytest.raises(ConfigError, match="BUCKETZIP_PART_SIZE"):
        Settings.from_env({}, part_size=1)


def test_replace_validates_and_leaves_the_original() -> None:
    s = Settings.from_env({})
    t = s.replace(part_size=16 * MiB)
    assert (s.part_size, t.part_size) == (8 * MiB, 16 * MiB)
    with pytest.raises(ConfigError, match="BUCKETZIP_READ_CONCURRENCY"):
        s.replace(read_concurrency=0)
    with pytest.raises(AttributeError):
        s.part_size = 1  # type: ignore[misc]


def test_settings_are_hashable_and_compare_by_value() -> None:
    # The per-process store cache is keyed on settings.
    a = Settings.from_env({"BUCKETZIP_ALLOWED_BUCKETS": "a,b"})
    b = Settings.from_env({"BUCKETZIP_ALLOWED_BUCKETS": "b,a"})
    assert a == b and hash(a) == hash(b)
    assert a != a.replace(max_entries=1)
