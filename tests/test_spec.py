"""The job spec: parsing, the three kinds of source, the JSON form, and every invalid case naming field and value.

Nothing here touches the network: a spec is validated before any store is contacted. That nothing is written
for an invalid spec is checked end to end in test_engine.py and test_cli.py.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from bucketzip.config import Settings
from bucketzip.errors import InvalidJob, LimitExceeded
from bucketzip.spec import STORAGE_CLASSES, JobSpec, Location, check_entry_name, sanitise_name

SETTINGS = Settings.from_env({})


def spec(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sources": ["s3://photos/2024/beach.jpg"], "destination": "s3://exports/u/trip.zip"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def test_the_issues_example() -> None:
    data = {
        "sources": [
            "s3://photos/2024/beach.jpg",
            {"url": "s3://photos/2024/raw/", "name": "raw/"},
            {"url": "s3://logs/app/2024-11-*.log", "name": "logs/"},
            {"url": "s3://docs/report.pdf", "name": "Report (final).pdf"},
        ],
        "destination": "s3://exports/user-42/trip.zip",
        "compression": "auto",
        "on_missing": "fail",
        "on_duplicate": "rename",
    }
    job = JobSpec.from_dict(data, SETTINGS)
    assert [s.kind for s in job.sources] == ["object", "prefix", "glob", "object"]
    assert [s.name for s in job.sources] == [None, "raw/", "logs/", "Report (final).pdf"]
    assert job.sources[0].location == Location("s3", "photos", "2024/beach.jpg")
    assert job.sources[1].fixed_prefix == "2024/raw/"
    assert job.sources[2].fixed_prefix == "app/"
    assert job.destination == Location("s3", "exports", "user-42/trip.zip")
    assert job.to_dict() == data


def test_defaults() -> None:
    job = JobSpec.from_dict(spec(), SETTINGS)
    assert (job.compression, job.on_missing, job.on_duplicate) == ("auto", "fail", "rename")
    assert job.compression_level is None and job.storage_class is None and job.metadata == ()
    assert job.presign_expires is None and job.job_id is None and job.content_disposition is None


def test_round_trip_with_every_option() -> None:
    data = spec(
        sources=[
            "s3://a-b/k",
            {"url": "s3://a-b/p/", "name": "folder/"},
            {"url": "s3://a-b/photo[1].jpg", "literal": True},
            {"url": "s3://a-b/x*", "name": "x.txt", "literal": True},
        ],
        compression="deflate",
        compression_level=9,
        on_missing="skip",
        on_duplicate="skip",
        storage_class="GLACIER",
        metadata={"owner": "user-42", "purpose": "trip"},
        content_disposition='attachment; filename="trip.zip"',
        presign_expires=3600,
        job_id="job-1.2:3_x",
    )
    job = JobSpec.from_dict(data, SETTINGS)
    assert job.to_dict() == data
    again = JobSpec.from_dict(json.loads(json.dumps(job.to_dict())), SETTINGS)
    assert again == job
    hash(job)  # frozen all the way down


@pytest.mark.parametrize(
    ("url", "kind", "fixed"),
    [
        ("s3://bkt/a/b.txt", "object", "a/b.txt"),
        ("s3://bkt/a/b/", "prefix", "a/b/"),
        ("s3://bkt/", "prefix", ""),
        ("s3://bkt", "prefix", ""),
        ("s3://bkt/logs/2024-11-*.log", "glob", "logs/"),
        ("s3://bkt/logs/2024-1?-01.log", "glob", "logs/"),
        ("s3://bkt/logs/[ab]/x.log", "glob", "logs/"),
        ("s3://bkt/data/**/part-*.csv", "glob", "data/"),
        ("s3://bkt/a/b*/c/*.txt", "glob", "a/"),
        ("s3://bkt/*.txt", "glob", ""),
        ("s3a://bkt/a.txt", "object", "a.txt"),
    ],
)
def test_source_kinds(url: str, kind: str, fixed: str) -> None:
    (source,) = JobSpec.from_dict(spec(sources=[url]), SETTINGS).sources
    assert source.kind == kind
    assert source.location.protocol == "s3" and source.location.bucket == "bkt"
    if kind == "object":
        assert source.location.key == fixed
    else:
        assert source.fixed_prefix == fixed


@pytest.mark.parametrize("key", ["photo[1].jpg", "logs/*.log", "a?b", "dir/", "[!x]/**"])
def test_a_literal_source_is_exactly_one_key(key: str) -> None:
    (source,) = JobSpec.from_dict(spec(sources=[{"url": f"s3://bkt/{key}", "literal": True}]), SETTINGS).sources
    assert (source.kind, source.location.key, source.literal) == ("object", key, True)
    (plain,) = JobSpec.from_dict(spec(sources=[f"s3://bkt/{key}"]), SETTINGS).sources
    assert plain.kind != "object" and not plain.literal


@pytest.mark.parametrize(
    ("source", "field", "message"),
    [
        ({"url": "s3://bkt/a[1]", "literal": "yes"}, "sources[0].literal", "true or false"),
        ({"url": "s3://bkt/a[1]", "literal": 1}, "sources[0].literal", "true or false"),
        ({"url": "s3://bkt/", "literal": True}, "sources[0].url", "must name an object's key"),
        ({"url": "s3://bkt/a", "literally": True}, "sources[0].literally", "allowed: url, name, literal"),
    ],
)
def test_invalid_literal(source: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidJob, match=message) as info:
        JobSpec.from_dict(spec(sources=[source]), SETTINGS)
    assert info.value.field == field


@pytest.mark.parametrize("name", ["raw", "raw/", "a/b/c/"])
def test_folder_names_of_prefixes_end_in_a_slash(name: str) -> None:
    (source,) = JobSpec.from_dict(spec(sources=[{"url": "s3://bkt/p/", "name": name}]), SETTINGS).sources
    assert source.name == name.rstrip("/") + "/"


def test_empty_folder_name_means_the_archive_root() -> None:
    (source,) = JobSpec.from_dict(spec(sources=[{"url": "s3://bkt/p/", "name": ""}]), SETTINGS).sources
    assert not source.name


def test_other_protocols_only_when_enabled() -> None:
    local = SETTINGS.replace(allowed_protocols=frozenset({"s3", "file"}))
    job = JobSpec.from_dict(spec(sources=["file:///srv/data/"], destination="file:///tmp/out.zip"), local)
    assert job.sources[0].location == Location("file", "", "/srv/data/")
    assert job.sources[0].kind == "prefix"
    assert job.destination.path == "/tmp/out.zip"
    assert job.destination.url == "file:///tmp/out.zip"


def test_destination_allow_list_is_separate_from_sources() -> None:
    s = SETTINGS.replace(allowed_buckets=frozenset({"photos"}), allowed_destination_buckets=frozenset({"exports"}))
    JobSpec.from_dict(spec(), s)
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(spec(destination="s3://photos/out.zip"), s)
    assert info.value.field == "destination"
    # Without a destination list, the source list applies to the destination too.
    s = SETTINGS.replace(allowed_buckets=frozenset({"photos"}))
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(spec(), s)
    assert info.value.field == "destination" and "exports" in str(info.value)
    JobSpec.from_dict(spec(destination="s3://photos/out.zip"), s)


# (spec changes, settings changes, field named, text of the value shown, exception type)
INVALID: list[tuple[str, dict[str, Any], dict[str, Any], str, str, type[InvalidJob]]] = [
    ("unknown field", {"destinaton": "s3://x/y.zip"}, {}, "destinaton", "s3://x/y.zip", InvalidJob),
    ("no sources", {"sources": DROP}, {}, "sources", "None", InvalidJob),
    ("empty sources", {"sources": []}, {}, "sources", "[]", InvalidJob),
    ("sources not a list", {"sources": "s3://bkt/k"}, {}, "sources", "'s3://bkt/k'", InvalidJob),
    ("source a number", {"sources": [42]}, {}, "sources[0]", "42", InvalidJob),
    ("source unknown key", {"sources": [{"url": "s3://bkt/k", "size": 3}]}, {}, "sources[0].size", "3", InvalidJob),
    ("source url missing", {"sources": [{"name": "a.txt"}]}, {}, "sources[0].url", "None", InvalidJob),
    ("source no scheme", {"sources": ["photos/a.jpg"]}, {}, "sources[0]", "photos/a.jpg", InvalidJob),
    ("source file://", {"sources": ["file:///etc/passwd"]}, {}, "sources[0]", "file:///etc/passwd", InvalidJob),
    ("source gs://", {"sources": ["gs://bkt/k"]}, {}, "sources[0]", "gs://bkt/k", InvalidJob),
    ("source bad bucket", {"sources": ["s3://Bad_Bucket/k"]}, {}, "sources[0]", "Bad_Bucket", InvalidJob),
    ("source control char", {"sources": ["s3://bkt/a\nb"]}, {}, "sources[0]", "a\\nb", InvalidJob),
    (
        "source not allowed",
        {"sources": ["s3://bkt/k", {"url": "s3://secret/k"}]},
        {"allowed_buckets": frozenset({"bkt", "exports"})},
        "sources[1].url",
        "s3://secret/k",
        InvalidJob,
    ),
    ("too many sources", {"sources": ["s3://bkt/k"] * 4}, {"max_sources": 3}, "sources", "4", LimitExceeded),
    ("no destination", {"destination": DROP}, {}, "destination", "None", InvalidJob),
    ("destination bucket", {"destination": "s3://exports"}, {}, "destination", "s3://exports/", InvalidJob),
    ("destination prefix", {"destination": "s3://exports/a/"}, {}, "destination", "s3://exports/a/", InvalidJob),
    ("destination file://", {"destination": "file:///tmp/x.zip"}, {}, "destination", "file:///tmp/x.zip", InvalidJob),
    (
        "destination not allowed",
        {},
        {"allowed_destination_buckets": frozenset({"safe"})},
        "destination",
        "s3://exports/u/trip.zip",
        InvalidJob,
    ),
    ("compression", {"compression": "zstd"}, {}, "compression", "zstd", InvalidJob),
    ("compression_level high", {"compression_level": 10}, {}, "compression_level", "10", InvalidJob),
    ("compression_level low", {"compression_level": -1}, {}, "compression_level", "-1", InvalidJob),
    ("compression_level text", {"compression_level": "6"}, {}, "compression_level", "'6'", InvalidJob),
    ("compression_level bool", {"compression_level": True}, {}, "compression_level", "True", InvalidJob),
    ("on_missing", {"on_missing": "ignore"}, {}, "on_missing", "ignore", InvalidJob),
    ("on_duplicate", {"on_duplicate": "overwrite"}, {}, "on_duplicate", "overwrite", InvalidJob),
    ("storage_class", {"storage_class": "COLD"}, {}, "storage_class", "COLD", InvalidJob),
    ("storage_class case", {"storage_class": "glacier"}, {}, "storage_class", "glacier", InvalidJob),
    ("metadata list", {"metadata": ["a"]}, {}, "metadata", "['a']", InvalidJob),
    ("metadata number", {"metadata": {"n": 1}}, {}, "metadata.n", "1", InvalidJob),
    ("metadata key", {"metadata": {"a b": "v"}}, {}, "metadata.a b", "v", InvalidJob),
    ("metadata unicode", {"metadata": {"who": "Zoë"}}, {}, "metadata.who", "Zoë", InvalidJob),
    ("metadata newline", {"metadata": {"who": "a\r\nX-Evil: 1"}}, {}, "metadata.who", "X-Evil", InvalidJob),
    ("metadata size", {"metadata": {"big": "x" * 3000}}, {}, "metadata", "3003", LimitExceeded),
    (
        "metadata over the room left by the tags",
        {"metadata": {"big": "x" * 1900}},
        {},
        "metadata",
        "1903",
        LimitExceeded,
    ),
    ("metadata reserved key", {"metadata": {"Bucketzip-Job": "x"}}, {}, "metadata.Bucketzip-Job", "x", InvalidJob),
    ("disposition ctl", {"content_disposition": "a\nb"}, {}, "content_disposition", "a\\nb", InvalidJob),
    ("disposition type", {"content_disposition": 5}, {}, "content_disposition", "5", InvalidJob),
    ("presign zero", {"presign_expires": 0}, {}, "presign_expires", "0", InvalidJob),
    ("presign too long", {"presign_expires": 7 * 86400 + 1}, {}, "presign_expires", "604801", InvalidJob),
    ("presign text", {"presign_expires": "60"}, {}, "presign_expires", "'60'", InvalidJob),
    ("presign float", {"presign_expires": 60.5}, {}, "presign_expires", "60.5", InvalidJob),
    ("job_id spaces", {"job_id": "my job"}, {}, "job_id", "my job", InvalidJob),
    ("job_id empty", {"job_id": ""}, {}, "job_id", "''", InvalidJob),
    ("job_id long", {"job_id": "j" * 129}, {}, "job_id", "jjjj", InvalidJob),
    ("job_id slash", {"job_id": "../x"}, {}, "job_id", "../x", InvalidJob),
]


@pytest.mark.parametrize(
    ("changes", "limits", "field", "shown", "kind"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_spec_names_field_and_value(
    changes: dict[str, Any], limits: dict[str, Any], field: str, shown: str, kind: type[InvalidJob]
) -> None:
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(spec(**changes), SETTINGS.replace(**limits))
    exc = info.value
    assert type(exc) is kind
    assert exc.field == field
    text = str(exc)
    assert text.startswith(f"invalid job: {field}="), text
    assert shown in text, text


def test_spec_must_be_an_object() -> None:
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(["s3://bkt/k"], SETTINGS)
    assert info.value.field == "spec" and "s3://bkt/k" in str(info.value)


def test_every_storage_class_is_accepted() -> None:
    for storage_class in STORAGE_CLASSES:
        assert JobSpec.from_dict(spec(storage_class=storage_class), SETTINGS).storage_class == storage_class


# Explicit names that would escape the archive root or confuse an extractor.
BAD_NAMES = [
    "../x.txt",
    "a/../../x.txt",
    "..",
    "/etc/passwd",
    "\\windows\\x.txt",
    "C:x.txt",
    "c:/x.txt",
    "a\\b.txt",
    "a\x00b.txt",
    "a\nb.txt",
    "a\x7fb.txt",
    "./a.txt",
    "a//b.txt",
    "",
    "folder/",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_explicit_object_name(name: str) -> None:
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(spec(sources=["s3://bkt/ok", {"url": "s3://bkt/k", "name": name}]), SETTINGS)
    assert info.value.field == "sources[1].name"
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["../", "/abs/", "C:/", "a/../../", "a\x01/"])
def test_unsafe_explicit_folder_name(name: str) -> None:
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(spec(sources=[{"url": "s3://bkt/p/", "name": name}]), SETTINGS)
    assert info.value.field == "sources[0].name"


def test_name_must_be_a_string() -> None:
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(spec(sources=[{"url": "s3://bkt/k", "name": 5}]), SETTINGS)
    assert info.value.field == "sources[0].name" and "5" in str(info.value)


def test_name_longer_than_a_zip_can_hold() -> None:
    with pytest.raises(LimitExceeded) as info:
        JobSpec.from_dict(spec(sources=[{"url": "s3://bkt/k", "name": "é" * 40_000}]), SETTINGS)
    assert info.value.field == "sources[0].name"


@pytest.mark.parametrize(
    "name", ["a.txt", "Report (final).pdf", "dir/sub/a.txt", "...", "..a", "a..b", "日本語/ファイル.txt", "C.txt"]
)
def test_safe_names_are_kept_exactly(name: str) -> None:
    (source,) = JobSpec.from_dict(spec(sources=[{"url": "s3://bkt/k", "name": name}]), SETTINGS).sources
    assert source.name == name


@pytest.mark.parametrize(
    ("key", "safe"),
    [
        ("../x", "_/x"),
        ("a/../../x", "a/_/_/x"),
        ("/abs/x", "abs/x"),
        ("a//b", "a/b"),
        ("./a/./b", "a/b"),
        ("a\\b", "a_b"),
        ("a\x01b\x7f", "a_b_"),
        ("C:/x", "C_/x"),
        ("C:x", "C_x"),
        ("dir/", "dir"),
        ("e\u0301.txt", "\u00e9.txt"),  # NFC: one code point, as macOS and Windows expect
        ("plain/name.txt", "plain/name.txt"),
    ],
)
def test_sanitise_key_derived_names(key: str, safe: str) -> None:
    assert sanitise_name(key) == safe


def test_sanitised_names_always_pass_the_explicit_name_rules() -> None:
    alphabet = ["a", "b", "/", ".", "..", "\\", ":", "C:", "\x00", "\x1f", "\x7f", "é", " ", "//"]
    rng = random.Random(1234)
    for _ in range(5000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        safe = sanitise_name(key)
        if safe:
            check_entry_name("name", safe)  # raises if the result could escape the root
            assert sanitise_name(safe) == safe, f"not idempotent for {key!r}"


# --- cold storage (issue 12): vault destinations, descriptions, on_archived ---


def test_a_vault_destination() -> None:
    job = JobSpec.from_dict({"sources": ["s3://bkt/k"], "destination": "glacier://my-vault_1.x"}, SETTINGS)
    assert job.destination == Location("glacier", "my-vault_1.x", "")
    assert job.destination.url == "glacier://my-vault_1.x" and job.to_dict()["destination"] == "glacier://my-vault_1.x"


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"destination": "glacier://v/key"}, "destination", "must be glacier://VAULT"),
        ({"destination": "glacier://bad vault"}, "destination", "invalid vault name"),
        ({"destination": "glacier://"}, "destination", "invalid vault name"),
        ({"sources": ["glacier://v"]}, "sources[0]", "only be a destination"),
        ({"destination": "glacier://v", "storage_class": "GLACIER"}, "storage_class", "does not apply"),
        ({"destination": "glacier://v", "presign_expires": 60}, "presign_expires", "does not apply"),
        ({"destination": "glacier://v", "metadata": {"a": "b"}}, "metadata", "does not apply"),
        ({"description": "caf\u00e9"}, "description", "printable ASCII"),
        ({"description": "a\nb"}, "description", "printable ASCII"),
        ({"description": "x" * 1025}, "description", "1-1024"),
        ({"description": ""}, "description", "1-1024"),
        ({"on_archived": "thaw"}, "on_archived", "fail, skip, restore"),
        ({"restore_tier": "Bulk"}, "restore_tier", "only applies with on_archived: restore"),
        ({"on_archived": "restore", "restore_tier": "bulk"}, "restore_tier", "Bulk, Standard, Expedited"),
        ({"on_archived": "restore", "restore_days": 0}, "restore_days", "from 1"),
        ({"on_archived": "restore", "restore_days": True}, "restore_days", "whole number"),
    ],
)
def test_cold_storage_fields_are_checked(data: dict[str, Any], field: str, reason: str) -> None:
    spec = {"sources": ["s3://bkt/k"], "destination": "s3://bkt/out.zip", **data}
    with pytest.raises(InvalidJob) as caught:
        JobSpec.from_dict(spec, SETTINGS)
    assert caught.value.field == field and reason in str(caught.value)


def test_vaults_obey_the_destination_allowlist() -> None:
    narrow = SETTINGS.replace(allowed_buckets=frozenset({"bkt", "vault-a"}))
    JobSpec.from_dict({"sources": ["s3://bkt/k"], "destination": "glacier://vault-a"}, narrow)
    with pytest.raises(InvalidJob, match="not in the allowed destinations"):
        JobSpec.from_dict({"sources": ["s3://bkt/k"], "destination": "glacier://vault-b"}, narrow)
    only_s3 = SETTINGS.replace(allowed_protocols=frozenset({"s3"}))
    with pytest.raises(InvalidJob, match="not allowed"):
        JobSpec.from_dict({"sources": ["s3://bkt/k"], "destination": "glacier://vault-a"}, only_s3)


def test_cold_storage_fields_round_trip() -> None:
    data = {
        "sources": ["s3://bkt/k"],
        "destination": "glacier://v",
        "compression": "auto",
        "on_missing": "fail",
        "on_duplicate": "rename",
        "description": "Photos 2019 (all)",
        "on_archived": "restore",
        "restore_tier": "Bulk",
        "restore_days": 3,
    }
    job = JobSpec.from_dict(data, SETTINGS)
    assert (job.on_archived, job.restore_tier, job.restore_days) == ("restore", "Bulk", 3)
    assert job.to_dict() == data
    assert (
        "on_archived" not in JobSpec.from_dict({"sources": ["s3://bkt/k"], "destination": "s3://bkt/o.zip"}).to_dict()
    )
