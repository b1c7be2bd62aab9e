"""``python -m services.scoring``: run a Faust worker of the scoring app."""

import faust

from services.scoring.app import create_app
from services.scoring.settings import ScoringSettings
from shared.logs import configure_logging


def main() -> None:
    """Read settings once, configure logs, run the worker until SIGTERM/SIGINT."""
    settings = ScoringSettings()
    configure_logging("scoring", settings.log_level, json=settings.log_json)
    app = create_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
