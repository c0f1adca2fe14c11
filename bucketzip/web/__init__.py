"""The HTTP API and the dashboard: one ASGI app (``create_app``) served by ``bucketzip serve`` or any ASGI
server (``uvicorn --factory bucketzip.web.app:create_app``).

Every route calls the same ``bucketzip.client.Client`` the command line uses, so the API, the CLI and the
dashboard cannot disagree. Like any producer, this package never loads s3fs, boto3 or the ZIP writer.

::

    app.py        the app: middleware (body limit, loopback guard, headers), /healthz /readyz /metrics /docs
    auth.py       bearer tokens and roles, the login cookie, CSRF
    problems.py   errors as RFC 9457 problem documents
    api.py        /v1: jobs, batches, events (SSE), retry and cancel, archives
    pages.py      the dashboard: server-rendered pages and the fragments its script refreshes
    live.py       what the dashboard and /metrics read often: gauges cached briefly, readiness probes
    metrics.py    the Prometheus collector, read from the registry at scrape time
"""
