"""The Dockerfile: a slim multi-stage image, non-root, that runs any service by command.

No Docker daemon is assumed (CI has none), so this reads the Dockerfile rather than building it.
"""

from __future__ import annotations

import re

from tests.deploy.support import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def test_image_is_multi_stage_slim_and_ships_no_build_tools_or_dev_dependencies() -> None:
    stages = [i for i in INSTRUCTIONS if i.startswith("FROM ")]
    assert [s.split()[-1] for s in stages] == ["builder", "runtime"]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in INSTRUCTIONS
    runtime = INSTRUCTIONS[INSTRUCTIONS.index(stages[1]) :]
    assert not any("build-essential" in i for i in runtime)
    assert not any(".[dev" in i or "[dev]" in i for i in INSTRUCTIONS)


def test_image_runs_as_a_numeric_non_root_user_and_takes_the_service_as_command() -> None:
    (user,) = [i for i in INSTRUCTIONS if i.startswith("USER ")]
    uid, _, gid = user.split()[1].partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    assert 'ENTRYPOINT ["python", "-m"]' in INSTRUCTIONS
    assert INSTRUCTIONS[-1].startswith("CMD [")


def test_build_context_leaves_out_secrets_git_and_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".env", ".env.*", ".venv", "tests", "deploy"} <= ignored
