"""The HTTP API (/v1) served by uvicorn, against real Redis, a real worker and the moto server."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from bucketzip.registry import CANCELLED, FAILED, QUEUED, RETRIED, SUCCEEDED
from tests.conftest import WEB_TOKENS, bearer
from tests.helpers import fetch_archive, keys, open_uploads, wait_until

ADMIN, READ, SUBMIT = bearer("admin"), bearer("read"), bearer("submit")


def spec(bucket: str, key: str = "out.zip", sources: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"sources": sources or [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/{key}", **extra}


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    r = http.get(f"/v1/jobs/{job_id}", headers=READ)
    assert r.status_code == 200, r.text
    return dict(r.json())


def ended(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(wait_until(lambda: (j := job(http, job_id))["finished"] and j, f"job {job_id} to end"))


def is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = dict(r.json())
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def test_roles_and_tokens(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = spec("bkt-roles")
    anonymous = is_problem(http.post("/v1/jobs", json=body), 401)
    assert "Bearer" in http.post("/v1/jobs", json=body).headers["www-authenticate"]
    assert anonymous["type"].endswith("unauthorized")
    is_problem(http.get("/v1/jobs", headers={"Authorization": "Bearer not-a-token-at-all-xxxxxx"}), 401)
    is_problem(http.get("/v1/jobs", headers={"Authorization": f"Basic {WEB_TOKENS['admin']}"}), 401)

    # submit: create jobs and read them by id; not list them, not act on them
    created = http.post("/v1/jobs", json=body, headers=SUBMIT)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/jobs/{job_id}"
    assert http.get(f"/v1/jobs/{job_id}", headers=SUBMIT).json()["state"] == QUEUED
    assert "it needs read" in is_problem(http.get("/v1/jobs", headers=SUBMIT), 403)["detail"]
    is_problem(http.get("/v1/archives", headers=SUBMIT), 403)
    is_problem(http.post(f"/v1/jobs/{job_id}/cancel", headers=SUBMIT), 403)
    is_problem(http.get("/metrics", headers=SUBMIT), 403)

    # read: everything readable; nothing else
    assert [j["id"] for j in http.get("/v1/jobs", headers=READ).json()["jobs"]] == [job_id]
    assert http.get("/metrics", headers=READ).status_code == 200
    is_problem(http.post("/v1/jobs", json=body, headers=READ), 403)
    is_problem(http.post(f"/v1/jobs/{job_id}/cancel", headers=READ), 403)
    is_problem(http.post("/v1/jobs/retry-failed", headers=READ), 403)

    # admin: all of it
    assert http.post(f"/v1/jobs/{job_id}/cancel", headers=ADMIN).json() == {"id": job_id, "state": CANCELLED}
    assert job(http, job_id)["state"] == CANCELLED
    for token in WEB_TOKENS.values():
        assert token not in caplog.text


def test_an_invalid_spec_is_a_problem_naming_the_field_and_nothing_is_queued(http: httpx.Client) -> None:
    r = http.post("/v1/jobs", json={"sources": ["s3://bkt-x/a"], "destination": "s3://bkt-x/"}, headers=SUBMIT)
    problem = is_problem(r, 422)
    assert problem["field"] == "destination" and problem["value"] == "s3://bkt-x/"
    assert problem["detail"].startswith("invalid job: destination='s3://bkt-x/': ")
    assert problem["type"].endswith("invalid-job") and problem["instance"] == "/v1/jobs"
    hostile = {"sources": [{"url": "s3://bkt-x/a", "name": "../etc/passwd"}], "destination": "s3://bkt-x/a.zip"}
    problem = is_problem(http.post("/v1/jobs", json=hostile, headers=SUBMIT), 422)
    assert problem["field"] == "sources[0].name" and problem["value"] == "../etc/passwd"
    problem = is_problem(
        http.post("/v1/jobs", content=b"[1, 2]", headers={**SUBMIT, "content-type": "application/json"}), 422
    )
    assert problem["field"] == "body"
    problem = is_problem(
        http.post("/v1/jobs", content=b"{nope", headers={**SUBMIT, "content-type": "application/json"}), 422
    )
    assert problem["field"].startswith("body")
    assert http.get("/v1/jobs", headers=READ).json() == {"jobs": [], "next": None}
    problem = is_problem(http.get("/v1/jobs?state=bogus", headers=READ), 422)
    assert problem["field"] == "state"
    problem = is_problem(http.get("/v1/jobs?limit=0", headers=READ), 422)
    assert problem["field"] == "query.limit" and problem["value"] == "0"
    assert is_problem(http.get("/v1/jobs/nope", headers=READ), 404)["job_id"] == "nope"


def test_submitting_is_idempotent_by_job_id(http: httpx.Client) -> None:
    body = spec("bkt-idem", job_id="order-42")
    first = http.post("/v1/jobs", json=body, headers=SUBMIT)
    again = http.post("/v1/jobs", json=body, headers=SUBMIT)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] == "order-42"
    assert [j["id"] for j in http.get("/v1/jobs", headers=READ).json()["jobs"]] == ["order-42"]
    # the same job_id with another spec would never make the second archive: a conflict, naming the field
    conflict = is_problem(
        http.post("/v1/jobs", json=spec("bkt-idem", "other.zip", job_id="order-42"), headers=SUBMIT), 409
    )
    assert conflict["field"] == "job_id" and conflict["value"] == "order-42"
    batch = http.post(
        "/v1/jobs/batch", json=[spec("bkt-idem", "b.zip", job_id="order-42"), spec("bkt-idem")], headers=SUBMIT
    ).json()
    assert [(i["position"], i["field"]) for i in batch["invalid"]] == [(0, "job_id")] and len(batch["accepted"]) == 1


def test_batch_as_a_json_array_and_as_json_lines(http: httpx.Client) -> None:
    items = [spec("bkt-b", "0.zip"), {"sources": []}, spec("bkt-b", "2.zip"), "not an object"]
    r = http.post("/v1/jobs/batch", json=items, headers=SUBMIT)
    assert r.status_code == 202, r.text
    first = r.json()
    assert [a["position"] for a in first["accepted"]] == [0, 2]
    assert [(i["position"], i["field"]) for i in first["invalid"]] == [(1, "sources"), (3, "spec")]
    lines = "\n".join([json.dumps(spec("bkt-b", "l0.zip")), "{broken", "", json.dumps(spec("bkt-b", "l3.zip"))])
    r = http.post("/v1/jobs/batch", content=lines, headers={**SUBMIT, "content-type": "application/x-ndjson"})
    second = r.json()
    assert [a["position"] for a in second["accepted"]] == [0, 3]
    assert [(i["position"], i["field"]) for i in second["invalid"]] == [(1, "spec")]
    assert "is not valid JSON" in second["invalid"][0]["detail"]
    listed = {j["id"] for j in http.get("/v1/jobs?limit=500", headers=READ).json()["jobs"]}
    assert listed == {a["id"] for a in first["accepted"] + second["accepted"]} and len(listed) == 4
    is_problem(http.post("/v1/jobs/batch", json={"not": "a list"}, headers=SUBMIT), 422)


def test_pages_walk_every_job_once_newest_first(http: httpx.Client, client: Any) -> None:
    # 30 in one batch (one timestamp: ties broken by id) and 5 one by one
    batch = client.submit_many([spec("bkt-p", f"{i}.zip") for i in range(30)])
    singles = [client.submit(spec("bkt-p", f"s{i}.zip")).id for i in range(5)]
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        r = http.get("/v1/jobs", params={"limit": 7, **({"cursor": cursor} if cursor else {})}, headers=READ)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["jobs"]) <= 7
        seen.extend(page["jobs"])
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    ids = [j["id"] for j in seen]
    assert len(ids) == len(set(ids)) == 35 and pages == 5
    assert set(ids) == {h.id for h in batch.accepted} | set(singles)
    assert ids[:5] == singles[::-1]  # newest first
    created = [j["created"] for j in seen]
    assert created == sorted(created, reverse=True)
    assert [j["id"] for j in http.get("/v1/jobs?state=queued&limit=500", headers=READ).json()["jobs"]] == ids
    assert http.get("/v1/jobs?state=failed", headers=READ).json() == {"jobs": [], "next": None}
    assert is_problem(http.get("/v1/jobs?cursor=garbage!", headers=READ), 422)["field"] == "cursor"


def test_follow_a_job_with_server_sent_events_to_its_result(
    worker: Any, http: httpx.Client, s3: Any, make_bucket: Any, big_corpus: Any
) -> None:
    bucket, files = big_corpus
    out = make_bucket()
    # The corpus three times over (90 MiB, 360 GETs): a job of several seconds, so that its progress is seen
    # more than once (the stream reads every 0.5 s).
    copies = 3
    body = {
        "sources": [{"url": f"s3://{bucket}/in/", "name": f"copy{i}/"} for i in range(copies)],
        "destination": f"s3://{out}/all.zip",
        "presign_expires": 600,
        "compression": "store",
    }
    job_id = http.post("/v1/jobs", json=body, headers=SUBMIT).json()["id"]
    events: list[tuple[str, Any]] = []
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=SUBMIT, timeout=120) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    assert kinds[0] == "state" and kinds[-1] == "end" and events[-1][1]["state"] == SUCCEEDED
    progress = [d for k, d in events if k == "progress"]
    assert len(progress) >= 2, kinds
    assert all(p["files_total"] == copies * len(files) for p in progress)
    done = [p["bytes_done"] for p in progress]
    assert done == sorted(done) and done[0] < done[-1]
    states = [d["state"] for k, d in events if k == "state"]
    assert states[-1] == SUCCEEDED and "running" in states

    record = job(http, job_id)
    assert record["state"] == SUCCEEDED and record["progress"] is None and record["error"] is None
    assert record["result"]["entries"] == copies * len(files) and record["result"]["url"].startswith("http")
    assert record["started"] <= record["finished"] and record["attempt"] == 1
    expected = {f"copy{i}/{k.removeprefix('in/')}": v for i in range(copies) for k, v in files.items()}
    fetch_archive(s3, out, "all.zip", expected)
    archives = http.get("/v1/archives", params={"prefix": f"s3://{out}/"}, headers=READ).json()
    assert [a["destination"] for a in archives["archives"]] == [f"s3://{out}/all.zip"]
    assert archives["archives"][0]["job_id"] == job_id
    assert http.get("/v1/archives", params={"prefix": "s3://elsewhere/"}, headers=READ).json()["archives"] == []
    # the stream of a job that already ended: its state, then the end
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=READ) as again:
        text = "".join(again.iter_text())
    assert text.count("event: state") == 1 and text.rstrip().endswith(f'"state":"{SUCCEEDED}"}}')
    is_problem(http.get("/v1/jobs/nope/events", headers=READ), 404)


def test_retry_a_failed_job_and_retry_all_failed(worker: Any, http: httpx.Client, s3: Any, make_bucket: Any) -> None:
    bucket = make_bucket()
    body = spec(bucket, "ab.zip", [f"s3://{bucket}/a.txt", f"s3://{bucket}/b.txt"])
    first = http.post("/v1/jobs", json=body, headers=SUBMIT).json()["id"]
    other = http.post("/v1/jobs", json=spec(bucket, "b.zip", [f"s3://{bucket}/b.txt"]), headers=SUBMIT).json()["id"]
    failed = ended(http, first)
    assert failed["state"] == FAILED and failed["error"]["type"] == "SourceMissing"
    assert f"s3://{bucket}/b.txt" in failed["error"]["message"]
    assert ended(http, other)["state"] == FAILED

    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    s3.put_object(Bucket=bucket, Key="b.txt", Body=b"bravo")
    r = http.post(f"/v1/jobs/{first}/retry", headers=ADMIN)
    assert r.status_code == 202, r.text
    second = r.json()["id"]
    assert r.json()["retry_of"] == first and second != first
    done = ended(http, second)
    assert done["state"] == SUCCEEDED and done["attempt"] == 2 and done["retry_of"] == first
    assert job(http, first)["state"] == RETRIED and job(http, first)["retried_by"] == second
    assert "retried" in is_problem(http.post(f"/v1/jobs/{first}/retry", headers=ADMIN), 409)["detail"]
    is_problem(http.post(f"/v1/jobs/{second}/retry", headers=ADMIN), 409)
    fetch_archive(s3, bucket, "ab.zip", {"a.txt": b"alpha", "b.txt": b"bravo"})

    everything = http.post("/v1/jobs/retry-failed", headers=ADMIN).json()["retried"]
    assert [r["retry_of"] for r in everything] == [other]
    assert ended(http, everything[0]["id"])["state"] == SUCCEEDED
    assert http.get("/v1/jobs?state=failed", headers=READ).json()["jobs"] == []


def test_cancel_a_running_job(worker: Any, http: httpx.Client, make_bucket: Any, big_corpus: Any, s3: Any) -> None:
    bucket, _ = big_corpus
    out = make_bucket()
    body = {"sources": [f"s3://{bucket}/in/"], "destination": f"s3://{out}/c.zip", "compression": "store"}
    job_id = http.post("/v1/jobs", json=body, headers=SUBMIT).json()["id"]
    wait_until(lambda: job(http, job_id)["state"] == "running", "the job to run")
    r = http.post(f"/v1/jobs/{job_id}/cancel", headers=ADMIN)
    assert r.status_code == 202 and r.json()["state"] in ("cancelling", CANCELLED)
    record = ended(http, job_id)
    assert record["state"] == CANCELLED and record["error"]["type"] == "JobCancelled"
    assert keys(s3, out) == [] and open_uploads(s3, out) == []
    assert http.post(f"/v1/jobs/{job_id}/cancel", headers=ADMIN).json()["state"] == CANCELLED
    is_problem(http.post("/v1/jobs/nope/cancel", headers=ADMIN), 404)


def test_stats_and_metrics_follow_the_jobs(worker: Any, http: httpx.Client, s3: Any, make_bucket: Any) -> None:
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha" * 100)
    good = http.post("/v1/jobs", json=spec(bucket), headers=SUBMIT).json()["id"]
    bad = http.post("/v1/jobs", json=spec(bucket, "x.zip", [f"s3://{bucket}/missing"]), headers=SUBMIT).json()["id"]
    assert ended(http, good)["state"] == SUCCEEDED and ended(http, bad)["state"] == FAILED
    size = job(http, good)["result"]["size"]
    text = http.get("/metrics", headers=READ).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['bucketzip_jobs{state="succeeded"}'] == 1 and samples['bucketzip_jobs{state="failed"}'] == 1
    assert samples["bucketzip_jobs_started_total"] == 2
    assert samples['bucketzip_jobs_finished_total{outcome="succeeded"}'] == 1
    assert samples['bucketzip_jobs_finished_total{outcome="failed"}'] == 1
    assert samples["bucketzip_jobs_failed_total"] == 1
    assert samples["bucketzip_input_bytes_total"] == 500 and samples["bucketzip_output_bytes_total"] == size
    assert samples["bucketzip_job_duration_seconds_count"] == 1
    assert samples['bucketzip_job_duration_seconds_bucket{le="+Inf"}'] == 1
    assert samples["bucketzip_queue_depth"] == 0 and samples["bucketzip_jobs_running"] == 0
    stats = http.get("/v1/stats", headers=READ).json()
    assert stats["counts"][SUCCEEDED] == 1 and stats["queue_depth"] == 0


def test_queue_depth_counts_waiting_messages(http: httpx.Client) -> None:
    for i in range(3):
        http.post("/v1/jobs", json=spec("bkt-q", f"{i}.zip"), headers=SUBMIT)
    assert wait_until(lambda: http.get("/v1/stats", headers=READ).json()["queue_depth"] == 3, "the depth", 5)
    assert "bucketzip_queue_depth 3.0" in http.get("/metrics", headers=READ).text


def test_health_and_readiness(http: httpx.Client, s3_env: dict[str, str]) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    r = http.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ok",
        "checks": {"broker": "ok", "result backend": "ok", "registry": "ok", "s3": "ok"},
    }


def test_session_login_and_csrf(http: httpx.Client, web: str) -> None:
    job_id = http.post("/v1/jobs", json=spec("bkt-c"), headers=SUBMIT).json()["id"]
    r = http.post("/login", data={"token": "wrong-token-wrong-token", "next": "/"})
    assert r.status_code == 401 and "bucketzip_session" not in r.cookies
    r = http.post("/login", data={"token": WEB_TOKENS["admin"], "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/"  # never an open redirect
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert WEB_TOKENS["admin"] not in cookie
    session = {"cookie": f"bucketzip_session={r.cookies['bucketzip_session']}"}
    page = http.get(f"/jobs/{job_id}", headers=session)
    assert page.status_code == 200 and "Cancel" in page.text
    csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    # a cross-site request riding on the cookie: refused without the page's token
    forged = http.post(f"/v1/jobs/{job_id}/cancel", headers={**session, "origin": "https://evil.example"})
    assert is_problem(forged, 403)["type"].endswith("csrf")
    refused = http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": "nope"}, headers=session)
    assert refused.status_code == 403 and "CSRF token is missing or wrong" in refused.text
    assert job(http, job_id)["state"] == QUEUED
    ok = http.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf}, headers=session)
    assert ok.status_code == 303 and job(http, job_id)["state"] == CANCELLED
    # a forged session cookie is nobody
    assert http.get("/", headers={"cookie": "bucketzip_session=9999999999.abc"}).status_code == 303
