"""schemathesis against the app's own OpenAPI schema: no 5xx, every response as documented."""

from __future__ import annotations

import uuid

import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config import load_settings
from worker.web import create_app

PREFIX = f"test-fuzz-{uuid.uuid4().hex[:8]}:"
QUEUE = f"test-fuzz-{uuid.uuid4().hex[:8]}"

# Unsigned mode lets generated events through the signature check, so the fuzzer reaches
# validation, dedupe and enqueueing; events land in a queue no worker reads, deleted below.
app = create_app(load_settings(redis_key_prefix=PREFIX, celery_queue=QUEUE, allow_unsigned=True))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )


def teardown_module() -> None:
    client = redis.Redis()
    keys = [*client.scan_iter(f"{PREFIX}*"), QUEUE]
    client.delete(*keys)
