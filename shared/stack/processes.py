"""Child processes that die with their parent and stop in order, leaving no orphan."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child if the launcher dies (even by kill -9)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A named child process with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    log_file: IO[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Signal, wait, and kill if it does not go."""
        if self.alive():
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
                self.process.kill()
                self.process.wait(5)
        if self.log_file is not None:
            self.log_file.close()


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Child:
    """Start a child writing to ``log_dir/<name>.log``; it dies if this process dies."""
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("ab")
    process = subprocess.Popen(
        list(argv),
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        user=user,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads are running at spawn time
        # its own process group: Ctrl-C in the terminal reaches only the launcher, which stops
        # the services before the broker and Postgres (they would otherwise all die at once)
        process_group=0,
    )
    return Child(name, process, log_path, stop_signal, handle)


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class StackFailed(RuntimeError):
    """A part of the embedded stack did not start. The message names it and what to change,
    so ``tierflow up`` prints it as one line rather than as a traceback."""


def wait_until(check: object, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``check()`` until it is truthy, or raise StackFailed naming ``what``."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise StackFailed(f"{what} not ready after {timeout:.0f}s")
