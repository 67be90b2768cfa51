"""In-process faces: httpx transports that serve the core's routes with no socket, an openai client over
them, and a loop thread for sync code. ``Router.httpx_transport``, ``Router.openai_client`` and
``Router.start_in_thread`` are the public way in; this package loads (with httpx and openai) only then."""
