"""``python -m services.identity``: run the resolving consumer and its HTTP surface."""

from services.identity.app import create_app
from services.identity.settings import IdentitySettings
from shared.logs import configure_logging
from shared.serve import run_http


def main() -> None:
    """Read settings once, configure logs, serve."""
    settings = IdentitySettings()
    configure_logging("identity", settings.log_level, json=settings.log_json)
    run_http(create_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
