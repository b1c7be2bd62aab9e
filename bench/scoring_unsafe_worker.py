"""A scoring worker with Faust's own table recovery (no end-offset probe), for the experiment
in ``bench/scoring_crash.py --unsafe`` that shows what the probe prevents."""

from faust.tables import TableManager

import services.scoring.app
from services.scoring.__main__ import main

services.scoring.app.ProbedTableManager = TableManager  # type: ignore[misc]

if __name__ == "__main__":
    main()
