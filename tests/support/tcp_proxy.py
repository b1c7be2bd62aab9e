"""A TCP proxy in front of a real server that a test can cut and restore (a network outage),
stall and resume (a server that hangs: connections stay open, nothing is answered), or slow
down (every chunk held a while: a loaded server or a long link)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards ``listen_port`` to ``target_port``; ``cut()`` drops every connection and refuses new
    ones until ``restore()``; ``stall()`` holds every byte in both directions until ``resume()``,
    losing none; ``slow(seconds)`` holds every chunk that long before forwarding it."""

    def __init__(self, listen_port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.host = host
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._latency = 0.0

    async def start(self) -> None:
        """Accept connections (again)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.listen_port)

    async def cut(self) -> None:
        """Stop listening and reset every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again after a cut."""
        await self.start()

    def stall(self) -> None:
        """Hold what either side sends, on open connections and new ones."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver what was held, and forward again."""
        self._flowing.set()

    def slow(self, seconds: float) -> None:
        """Hold each chunk ``seconds`` before forwarding it (0: no delay)."""
        self._latency = seconds

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError):  # the other side went away
                while chunk := await reader.read(65536):
                    await self._flowing.wait()
                    if self._latency:
                        await asyncio.sleep(self._latency)
                    writer.write(chunk)
                    await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
