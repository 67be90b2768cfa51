"""A relayed stream is every byte the provider sent, in its events: what the broker signed (protocol.md
§5.3) is what the verifier hashes. A real aiohttp server on 127.0.0.1 sends the bytes."""

from __future__ import annotations

import pytest
from aiohttp import web

from router.errors import ProviderUnreachable
from router.pool.providers import ProviderInfo, ProviderKind
from router.transport.http import HttpTransport, TransportOptions
from tests.support import serving

EVENTS = b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\ndata: [DONE]\n\n'


async def relayed(sent: bytes) -> list[bytes]:
    """The events ``Upstream.events()`` yields for a stream whose body is ``sent``, in two writes."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sent[:9])
        await response.write(sent[9:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/proxy/chat/completions", handler)
    async with serving(app) as url, HttpTransport(TransportOptions(allow_private_targets=True)) as transport:
        info = ProviderInfo("0xp", ProviderKind.CHAIN, url + "/v1/proxy", url, "chatbot", ("m",))
        upstream = await transport.send(info, "/chat/completions", b"{}", {}, time_left=5, stream=True)
        try:
            return [event async for event in upstream.events()]
        finally:
            upstream.close()


@pytest.mark.parametrize("tail", [b"", b"\n", b"\r\n\n  \n"])
async def test_every_byte_sent_is_in_the_events(tail: bytes) -> None:
    """Whitespace after the last event is relayed too (as its own piece), never dropped."""
    events = await relayed(EVENTS + tail)
    assert b"".join(events) == EVENTS + tail
    assert events[:3] == [b'data: {"a": 1}\n\n', b'data: {"b": 2}\r\n\r\n', b"data: [DONE]\n\n"]


async def test_a_stream_cut_inside_an_event_is_a_provider_failure() -> None:
    with pytest.raises(ProviderUnreachable, match="middle of an event"):
        await relayed(EVENTS + b"data: {")
