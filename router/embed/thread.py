"""``LoopThread``: a router's event loop on a background thread it owns, for code that is not async."""

from __future__ import annotations

import asyncio
import atexit
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from router.errors import RouterError

if TYPE_CHECKING:
    from router.client import Router


class LoopThread:
    """``with LoopThread(router) as router:`` opens ``router`` on a new thread's loop and returns it once
    it is open (or raises what opening raised); leaving the block closes the router there and joins the
    thread. If the program exits without leaving the block, the same happens at interpreter exit: the
    thread is a daemon (it cannot hold the exit up), and an ``atexit`` hook closes the router first."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop the router lives on."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            raise RouterError(
                "the router is not running on a thread: "
                "use `with Router(config).start_in_thread() as router:`"
            )
        return self._loop

    def __enter__(self) -> Router:
        if self._thread is not None:
            raise RouterError("start_in_thread() runs once: make a new Router to start another")
        opened = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(opened,), name="zg-router-loop", daemon=True)
        self._thread.start()
        opened.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        atexit.register(self.stop)
        return self._router

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the router on its loop and join the thread (at most once; later calls do nothing)."""
        atexit.unregister(self.stop)
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, opened: threading.Event) -> None:
        try:
            asyncio.run(self._serve(opened))
        except BaseException as exc:
            # Raised again in the thread that waits: by __enter__ (opening failed) or by stop().
            self._error = exc
        finally:
            opened.set()

    async def _serve(self, opened: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with self._router:
            opened.set()
            await self._stopping.wait()
