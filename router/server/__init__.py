"""The faces: the OpenAI-compatible aiohttp gateway."""
