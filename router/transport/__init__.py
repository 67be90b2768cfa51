"""Talking to providers: the ``ProviderTransport`` protocol (``base``), its aiohttp client (``http``), the
URL guard, SSE framing, and ``FakeTransport`` (``fake``), a scripted transport for tests."""
