"""``python -m services.ingest``: serve the collection API."""

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.logs import configure_logging
from shared.serve import run_http


def main() -> None:
    """Read settings once, configure logs, serve."""
    settings = IngestSettings()
    configure_logging("ingest", settings.log_level, json=settings.log_json)
    run_http(create_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
