"""``python -m services.scoring``: run a Faust worker of the scoring app."""

import gc

import faust

from services.scoring.app import create_app
from services.scoring.settings import ScoringSettings
from shared.logs import configure_logging


def main() -> None:
    """Read settings once, configure logs, run the worker until SIGTERM/SIGINT."""
    # A batch allocates tens of thousands of short-lived dicts; with the default thresholds
    # young collections ran every 700 allocations and full ones walked every person's state,
    # about a fifth of the model's time. Startup objects are frozen out of every collection.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
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
