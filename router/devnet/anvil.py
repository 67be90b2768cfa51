"""Run the native anvil binary on 127.0.0.1 as an async context manager that always kills it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import re
import signal
from pathlib import Path
from types import TracebackType
from typing import Self

from router.errors import DevnetError

_LISTENING = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")
_START_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills anvil if we die without cleaning up (SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Anvil:
    """An anvil process. ``rpc_url`` is known once entered; leaving kills the process by PID."""

    def __init__(self, binary: Path, *, accounts: int, port: int = 0, block_time: float | None = None):
        self._argv = [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--accounts",
            str(accounts),
        ]
        if block_time is not None:
            self._argv += ["--block-time", str(block_time)]
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.rpc_url = ""

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session, so a terminal Ctrl-C reaches only us and we tear down in order; and
            # tied to our life, so even a SIGKILL of this process leaves no anvil holding its port.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                port = await self._read_port(self._process.stdout)
        except BaseException:
            await self.aclose()
            raise
        self.rpc_url = f"http://127.0.0.1:{port}"
        return self

    async def _read_port(self, stdout: asyncio.StreamReader) -> int:
        banner = []
        async for line in stdout:
            banner.append(line)
            if match := _LISTENING.search(line):
                # anvil logs every RPC call to stdout; drain it so the pipe never fills and blocks it.
                self._drain = asyncio.create_task(self._discard(stdout))
                return int(match.group(1))
        tail = b"".join(banner[-5:]).decode(errors="replace").strip()
        raise DevnetError(f"anvil exited before listening: {tail}")

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Kill anvil and reap it. Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
        drain, self._drain = self._drain, None
        if drain is not None:
            await drain
