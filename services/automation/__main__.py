"""``python -m services.automation``: run the action consumer and its HTTP surface."""

from services.automation.app import create_app
from services.automation.settings import AutomationSettings
from shared.logs import configure_logging
from shared.serve import run_http


def main() -> None:
    """Read settings once, configure logs, serve."""
    settings = AutomationSettings()
    configure_logging("automation", settings.log_level, json=settings.log_json)
    run_http(create_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
