"""``python -m services.ingest``: serve the collection API."""

import gc

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.logs import configure_logging
from shared.serve import run_http


def main() -> None:
    """Read settings once, configure logs, serve."""
    settings = IngestSettings()
    configure_logging("ingest", settings.log_level, json=settings.log_json)
    # Requests allocate many short-lived objects and no cycles worth chasing often: freezing the
    # startup heap and collecting less eagerly removes multi-millisecond pauses from the tail.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    run_http(
        create_app(settings),
        settings.host,
        settings.port,
        drain_s=settings.drain_s,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
