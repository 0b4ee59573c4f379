"""Wire the operator surfaces into the web app: ``/metrics`` always, ``/console`` when
``CONSOLE_PASSWORD`` is set (else it is not mounted and answers 404)."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import Response

from config import Settings
from worker import metrics
from worker.health import RedisHealth
from worker.intake import EventIntake
from worker.runtime import Runtime


def mount_operator_surfaces(
    app: FastAPI, settings: Settings, rt: Runtime, intake: EventIntake
) -> None:
    registry = metrics.build_registry(RedisHealth(rt))
    token = settings.metrics_token

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return Response(
                    "bearer METRICS_TOKEN required\n",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                    media_type="text/plain",
                )
        body, content_type = metrics.render(registry)
        return Response(body, media_type=content_type)

    if settings.console_password is None:
        return
    from worker.console.pages import create_console

    console = create_console(settings, rt, intake, settings.console_password)
    app.mount("/console", console)
