"""Running an ASGI app the same way in every service (uvloop, httptools, graceful drain)."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI


def run_http(
    app: FastAPI, host: str, port: int, *, drain_s: int = 10, proxy_headers: bool = True
) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting and drain in-flight requests.

    ``proxy_headers=False`` skips X-Forwarded-* parsing for services that never use the client
    address.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=drain_s,
        backlog=4096,
        proxy_headers=proxy_headers,
    )
    uvicorn.Server(config).run()
