"""Talking to providers over HTTP: the aiohttp client, URL guard and SSE framing."""
