"""Prometheus helpers: bucket sets, the /metrics response, and HTTP request metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PIPELINE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
SIZE_BUCKETS = (256, 1024, 4096, 16_384, 32_768, 131_072, 524_288)

HTTP_REQUESTS = Counter(
    "tierflow_http_requests_total",
    "HTTP requests by service, route and status class.",
    ["service", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "tierflow_http_request_duration_seconds",
    "HTTP request latency by service and route.",
    ["service", "route"],
    buckets=LATENCY_BUCKETS,
)

UNMEASURED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def metrics_payload() -> tuple[bytes, str]:
    """The current registry in Prometheus text format, with its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


def install_request_metrics(app: FastAPI, service: str) -> None:
    """Count and time every request by route template, except health and metrics probes."""

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in UNMEASURED_PATHS:
            return await call_next(request)
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        HTTP_LATENCY.labels(service, template).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(service, template, f"{response.status_code // 100}xx").inc()
        return response
