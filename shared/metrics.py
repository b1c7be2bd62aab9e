"""Prometheus helpers: bucket sets, the /metrics response, and HTTP request metrics."""

from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    """Count and time every request by route template, except health and metrics probes.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` costs a task and a stream per
    request, which is a measurable share of a single-event ingest call.
    """
    app.add_middleware(RequestMetrics, service=service)


class RequestMetrics:
    """ASGI middleware behind :func:`install_request_metrics`."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNMEASURED_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            HTTP_LATENCY.labels(self.service, template).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(self.service, template, f"{status // 100}xx").inc()
