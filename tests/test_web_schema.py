"""schemathesis against our own OpenAPI document: no generated request makes the server fail (5xx)."""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import bearer

EXAMPLES = 15  # per operation: enough to reach every parameter's edge cases, cheap enough for CI


def test_no_generated_request_is_a_server_error(web: str) -> None:
    # (schemathesis' pytest plugin does not load under this pytest: the operations are walked by hand.)
    schema = schemathesis.openapi.from_url(f"{web}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            if case.path.endswith("/events"):
                case.path_parameters = {"job_id": "no-such-job"}  # a real job's stream lasts until it ends
            response = case.call(base_url=web, headers=bearer("admin"), timeout=30)
            case.validate_response(response, checks=[not_a_server_error])

        check()


def test_the_openapi_document_describes_the_api(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    paths = set(doc["paths"])
    assert {
        "/v1/jobs",
        "/v1/jobs/batch",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/retry",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/retry-failed",
        "/v1/archives",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= paths
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["sources", "destination"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in docs.text
    assert http.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
