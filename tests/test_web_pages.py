"""The dashboard in a real headless Chromium (Debian's chromium, driven by Playwright), against the real API
server, Redis, a worker and the moto server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import WEB_TOKENS, bearer, need
from tests.helpers import fetch_archive, keys, open_uploads, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE = "<img src=x onerror=alert(1)>.txt"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(os.path.exists(CHROMIUM), f"Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, web: str) -> Iterator[Any]:
    """A fresh browser context logged in through the login form as admin; alerts are recorded, not shown."""
    context = browser.new_context(base_url=web, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.goto("/")
    assert "/login" in pg.url
    pg.fill("input[name=token]", WEB_TOKENS["admin"])
    pg.click("button:has-text('Log in')")
    pg.wait_for_url(f"{web}/")
    yield pg
    context.close()


def poll(predicate: Any, what: str, timeout: float = 60) -> Any:
    return wait_until(predicate, what, timeout, interval=0.1)


def test_a_running_jobs_progress_bar_advances_then_cancel_stops_it(
    page: Any, http: httpx.Client, worker: Any, s3: Any, make_bucket: Any, big_corpus: Any
) -> None:
    bucket, files = big_corpus
    out = make_bucket()
    # The corpus eight times over (240 MiB, 960 GETs) at level-9 DEFLATE of incompressible data: long enough to
    # watch, then cancel well before it could reach its commit (a cancel after that rightly lets it succeed).
    # Cancelled early, it costs no more time than a shorter one.
    copies = 8
    sources = [{"url": f"s3://{bucket}/in/", "name": f"copy{i}/"} for i in range(copies)]
    body = {
        "sources": sources,
        "destination": f"s3://{out}/long.zip",
        "compression": "deflate",
        "compression_level": 9,
    }
    job_id = http.post("/v1/jobs", json=body, headers=bearer("submit")).json()["id"]

    page.goto("/?state=running")
    page.evaluate("window.__notReloaded = true")
    bar = page.locator(f"tr[data-job='{job_id}'] progress")
    bar.wait_for(timeout=60_000)
    first = float(bar.get_attribute("value"))
    assert 0 <= first < 100
    later = poll(lambda: (v := float(bar.get_attribute("value"))) > first and v, "the progress bar to advance")
    assert later > first
    row = page.locator(f"tr[data-job='{job_id}']")
    assert f"/{len(files) * copies} files" in row.inner_text()
    assert page.evaluate("window.__notReloaded === true")  # refreshed in place, not by reloading the page
    assert int(page.locator("a.tab[data-state=running] .count").inner_text()) == 1

    row.locator("a").first.click()
    page.wait_for_url(f"**/jobs/{job_id}")
    assert page.locator("#job-state").inner_text() == "running"
    assert page.locator("button:has-text('Retry')").count() == 0
    page.click("button:has-text('Cancel')")
    shown: list[str] = []

    def shows_cancelled() -> bool:
        shown.append(page.locator("#job-state").inner_text())
        return shown[-1] == "cancelled"

    try:
        poll(shows_cancelled, "the page to show the job cancelled")
    except AssertionError as exc:  # say which: the job did not stop, stopped otherwise, or the page went stale
        recorded = http.get(f"/v1/jobs/{job_id}", headers=bearer("read")).json().get("state")
        raise AssertionError(f"{exc}; the page showed {sorted(set(shown))}, the API says {recorded!r}") from None
    assert page.locator(".error-type").first.inner_text() == "JobCancelled"
    assert page.locator("button:has-text('Cancel')").count() == 0
    assert keys(s3, out) == [] and open_uploads(s3, out) == []


def test_retry_on_a_failed_job_leads_to_a_succeeded_job(
    page: Any, http: httpx.Client, worker: Any, s3: Any, make_bucket: Any
) -> None:
    bucket = make_bucket()
    body = {"sources": [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/a.zip", "presign_expires": 600}
    first = http.post("/v1/jobs", json=body, headers=bearer("submit")).json()["id"]
    other = http.post(
        "/v1/jobs", json={**body, "destination": f"s3://{bucket}/b.zip"}, headers=bearer("submit")
    ).json()["id"]
    for job_id in (first, other):
        poll(lambda j=job_id: http.get(f"/v1/jobs/{j}", headers=bearer("read")).json()["state"] == "failed", "fail")

    page.goto("/?state=failed")
    assert int(page.locator("a.tab[data-state=failed] .count").inner_text()) == 2
    page.click(f"tr[data-job='{first}'] a")
    assert page.locator(".error-type").first.inner_text() == "SourceMissing"
    assert f"s3://{bucket}/a.txt" in page.locator(".error-message").first.inner_text()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    page.click("button:has-text('Retry')")
    page.wait_for_url(lambda url: "/jobs/" in url and first not in url)
    second = page.url.rsplit("/", 1)[1]
    poll(lambda: page.locator("#job-state").inner_text() == "succeeded", "the retry to succeed on the page")
    assert page.locator("a.download").get_attribute("href").startswith("http")
    attempts = page.locator("ol.attempts li")
    assert attempts.count() == 2 and first in attempts.nth(0).inner_text() and second in attempts.nth(1).inner_text()
    fetch_archive(s3, bucket, "a.zip", {"a.txt": b"alpha"})

    # "Retry all failed", after a confirmation page
    page.goto("/?state=failed")
    page.click("a:has-text('Retry all failed')")
    assert "1 job(s) are recorded as failed" in page.inner_text("main")
    page.click("button:has-text('Yes, retry 1 failed job(s)')")
    page.wait_for_url("**/?state=queued")
    retried = http.get(f"/v1/jobs/{other}", headers=bearer("read")).json()
    assert retried["state"] == "retried" and retried["retried_by"]
    assert page.locator("a.tab[data-state=failed] .count").inner_text() == "0"


def test_hostile_object_names_render_as_text(
    page: Any, http: httpx.Client, worker: Any, s3: Any, make_bucket: Any
) -> None:
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key=HOSTILE, Body=b"boo")
    good = {"sources": [f"s3://{bucket}/{HOSTILE}"], "destination": f"s3://{bucket}/<b>bold</b>.zip"}
    bad = {"sources": [f"s3://{bucket}/<script>alert(2)</script>.txt"], "destination": f"s3://{bucket}/x.zip"}
    ok_id = http.post("/v1/jobs", json=good, headers=bearer("submit")).json()["id"]
    bad_id = http.post("/v1/jobs", json=bad, headers=bearer("submit")).json()["id"]
    for job_id in (ok_id, bad_id):
        poll(lambda j=job_id: http.get(f"/v1/jobs/{j}", headers=bearer("read")).json()["finished"], "the job")

    page.goto(f"/jobs/{ok_id}")
    assert HOSTILE in page.locator("pre.spec").inner_text()
    assert f"s3://{bucket}/<b>bold</b>.zip" in page.inner_text("main")
    page.goto("/?state=succeeded")
    assert f"s3://{bucket}/<b>bold</b>.zip" in page.locator(f"tr[data-job='{ok_id}'] td.dest").inner_text()
    page.goto(f"/jobs/{bad_id}")
    assert "<script>alert(2)</script>.txt" in page.locator(".error-message").inner_text()
    page.goto(f"/archives?prefix=s3://{bucket}/")
    assert f"s3://{bucket}/<b>bold</b>.zip" in page.locator("td.dest").first.inner_text()
    for where in (f"/jobs/{ok_id}", "/?state=failed", "/?state=succeeded", f"/archives?prefix=s3://{bucket}/"):
        page.goto(where)
        page.wait_for_timeout(0)
        assert page.locator("img").count() == 0 and page.locator("main b, main script").count() == 0, where
    assert page.dialogs == []
    fetch_archive(s3, bucket, "<b>bold</b>.zip", {HOSTILE: b"boo"})


def test_a_read_only_login_sees_no_buttons_and_cannot_act(browser: Any, web: str, http: httpx.Client) -> None:
    job_id = http.post(
        "/v1/jobs", json={"sources": ["s3://bkt-ro/a"], "destination": "s3://bkt-ro/a.zip"}, headers=bearer("submit")
    ).json()["id"]
    context = browser.new_context(base_url=web)
    pg = context.new_page()
    pg.goto(f"/jobs/{job_id}")
    pg.fill("input[name=token]", WEB_TOKENS["read"])
    pg.click("button:has-text('Log in')")
    pg.wait_for_url(f"**/jobs/{job_id}")
    assert pg.locator("#job-state").inner_text() == "queued"
    assert pg.locator("button:has-text('Cancel')").count() == 0
    status = pg.evaluate(f"fetch('/v1/jobs/{job_id}/cancel', {{method: 'POST'}}).then(r => r.status)")
    assert status == 403
    context.close()
