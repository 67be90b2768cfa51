"""A real ``redis-server`` for tests of shared state: started on a free loopback port with nothing saved
to disk, ready once PING answers, killed (and reaped) on teardown. ``stop()``/``cont()`` freeze and thaw
it (SIGSTOP/SIGCONT: a Redis that is there but answers nothing), ``restart()`` kills it and starts an
empty one on the same port.

Use the ``redis_server`` fixture (a fresh server per test), or ``RedisServer`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"
START_WITHIN = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port``; ``url`` reaches it."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"<RedisServer :{self.port} pid={self.pid} stopped={self._stopped}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not running"
        return self._process.pid

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Until PING answers PONG on the port (the process may still be binding it)."""
        assert self._process is not None
        async with asyncio.timeout(START_WITHIN):
            while True:
                if self._process.returncode is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}")
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    try:
                        writer.write(b"PING\r\n")
                        await writer.drain()
                        if await reader.readline() == b"+PONG\r\n":
                            return
                    finally:
                        writer.close()
                        with contextlib.suppress(OSError):
                            await writer.wait_closed()
                # Polling a process that is starting up: nothing to wait on but time.
                await asyncio.sleep(0.02)

    def stop(self) -> None:
        """Freeze the server: connections stay open, nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)
        self._stopped = True

    def cont(self) -> None:
        """Thaw a frozen server: it answers what it was sent meanwhile."""
        os.kill(self.pid, signal.SIGCONT)
        self._stopped = False

    async def kill(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        if self._stopped:
            process.send_signal(signal.SIGCONT)
            self._stopped = False
        await process.wait()

    async def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        await self.kill()
        await self.start()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A fresh, empty ``redis-server`` for the test, killed afterwards."""
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
