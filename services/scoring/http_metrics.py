"""Request metrics for the scoring worker's pages, which Faust serves with aiohttp: the same
``tierflow_http_*`` families the FastAPI services record (:mod:`shared.metrics`), by route
template, except health and metrics probes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS, UNMEASURED_PATHS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_metrics(service: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware (for Faust's ``web_application_options``) counting and timing
    ``service``'s requests."""

    @web.middleware
    async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNMEASURED_PATHS:
            return await handler(request)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            resource = request.match_info.route.resource
            template = resource.canonical if resource is not None else "unmatched"
            HTTP_LATENCY.labels(service, template).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(service, template, f"{status // 100}xx").inc()

    return measured
