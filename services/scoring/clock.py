"""The scoring worker's notion of "now": the wall clock, or a file tests and demos control."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

Clock = Callable[[], float]


def build_clock(path: Path | None) -> Clock:
    """Wall-clock epoch seconds, or the number written in ``path`` (re-read on every call) so
    a test can make days of silence pass in a moment. Whoever moves it must replace the file
    (write another, then rename it over): read while rewritten in place, it is empty."""
    if path is None:
        return time.time
    source = path

    def from_file() -> float:
        return float(source.read_text().strip())

    return from_file
