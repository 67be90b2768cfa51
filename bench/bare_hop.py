"""The reference hop for the benchmark: the least a Python proxy can do, on the same aiohttp stack.

One handler that reads the body and forwards it to one provider with a fixed session token, nothing else:
no routing, limits, failover or logging. A streamed request (``"stream": true`` in its body) has the
provider's SSE bytes relayed chunk by chunk as they arrive. It runs on uvloop, as the gateway does. The
benchmark runs it beside the gateway, so that the gateway's cost can be read against what any aiohttp
proxy costs on the same machine. ``GET /readyz`` answers 200 at once: the benchmark times the hop's
start to ready (spawn to its first answer) as the platform's own start cost.
"""

from __future__ import annotations

import asyncio
import os

import uvloop
from aiohttp import ClientResponse, ClientSession, TCPConnector, web

# A byte search rather than a JSON parse: the least a proxy can do to tell a stream (both spacings).
STREAM_MARKERS = (b'"stream": true', b'"stream":true')


async def relay(request: web.Request, reply: ClientResponse) -> web.StreamResponse:
    """The provider's SSE bytes, written on as each chunk arrives."""
    response = web.StreamResponse(status=reply.status, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    async for chunk in reply.content.iter_any():
        await response.write(chunk)
    await response.write_eof()
    return response


async def main() -> None:
    upstream, authorization, port = (
        os.environ["UPSTREAM"],
        os.environ["AUTHORIZATION"],
        int(os.environ["PORT"]),
    )
    headers = {"Authorization": authorization, "Content-Type": "application/json"}
    async with ClientSession(connector=TCPConnector(limit=0)) as session:

        async def forward(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            async with session.post(upstream, data=body, headers=headers) as reply:
                if any(marker in body for marker in STREAM_MARKERS):
                    return await relay(request, reply)
                return web.Response(
                    body=await reply.read(), status=reply.status, content_type="application/json"
                )

        async def ready(_: web.Request) -> web.Response:
            return web.Response(text="ready")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", forward)
        app.router.add_get("/readyz", ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(main())
