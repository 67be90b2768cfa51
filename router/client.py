"""``Router``: the composition root. It owns every resource and background task, and serves requests
in-process (the library API) or for the gateway, through one dispatch loop.

    async with Router(config) as router:
        reply = await router.chat(model="qwen-7b", messages=[{"role": "user", "content": "hi"}])
        async for chunk in router.stream_chat(model="qwen-7b", messages=[...]):
            ...
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

from router.chain.client import ChainClient
from router.chain.session import SessionTokens
from router.chain.wallet import Wallet
from router.config import RouterConfig
from router.discovery import Discovery, Prober, static_infos
from router.dispatch import Call, Dispatcher, Endpoint, Reply, StreamReply
from router.errors import AllAttemptsFailed, RouterError
from router.observability.events import BreakerChanged, Event, Observer
from router.policy.select import NO_PREFERENCES, Preferences, parse_preferences
from router.pool.admission import Admission
from router.pool.catalog import model_catalog
from router.pool.providers import Pool, ProviderInfo, ProviderKind, ProviderState
from router.transport.http import HttpTransport


class Router:
    """Routes OpenAI-compatible requests over the 0G providers and static upstreams in ``config``."""

    def __init__(self, config: RouterConfig, *, observers: Sequence[Observer] = ()) -> None:
        self.config = config
        self._observers = list(observers)
        self._stack = AsyncExitStack()
        self._pool: Pool | None = None
        self._dispatcher: Dispatcher | None = None
        self._admission: Admission | None = None
        self._tokens: SessionTokens | None = None
        self.wallet_address: str | None = None

    def __repr__(self) -> str:
        size = len(self._pool) if self._pool is not None else "-"
        network = self.config.network.name if self.config.network else "static"
        return f"<Router {network} providers={size}>"

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _open(self) -> None:
        config = self.config
        clock = asyncio.get_running_loop().time
        pool = Pool(
            config.health,
            clock=clock,
            rate_margin=config.dispatch.rate_margin,
            on_breaker=lambda provider, state: self.emit(BreakerChanged(provider, state.value)),
        )
        pool.replace(ProviderKind.STATIC, static_infos(config.static_upstreams))
        transport = await self._stack.enter_async_context(HttpTransport(config.transport))
        admission = await self._stack.enter_async_context(Admission(clock=clock))
        discovery = None
        if config.network is not None:
            assert config.private_key is not None
            wallet = Wallet(config.private_key)
            self.wallet_address = wallet.address
            chain = await self._stack.enter_async_context(ChainClient(config.network, wallet))
            self._tokens = SessionTokens(chain)
            discovery = Discovery(
                chain,
                transport,
                pool,
                config.discovery,
                allow_private=config.transport.allow_private_targets,
                warm=self._tokens.authorization,
                emit=self.emit,
            )
            await discovery.refresh()
        self._pool, self._admission = pool, admission
        self._dispatcher = Dispatcher(
            pool,
            admission,
            transport,
            self._authorize,
            config.dispatch,
            self.emit,
            on_misconfigured=self._forget_token,
        )
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        background = [
            tasks.create_task(Prober(pool, transport, config.discovery, self.emit).run(admission.wake))
        ]
        if discovery is not None:
            background.append(tasks.create_task(discovery.run()))
        # Runs before the TaskGroup's exit (the stack unwinds in reverse); the group then awaits them.
        self._stack.callback(lambda: [task.cancel() for task in background])

    # -- what the gateway uses --------------------------------------------------------------------

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RouterError("the Router is not open: use `async with Router(config) as router:`")
        return self._pool

    def now(self) -> float:
        assert self._admission is not None
        return self._admission.now()

    def subscribe(self, observer: Observer) -> None:
        """Receive every event (requests, attempts, refreshes) from now on."""
        self._observers.append(observer)

    def emit(self, event: Event) -> None:
        for observer in self._observers:
            observer(event)

    def new_call(
        self,
        endpoint: Endpoint,
        *,
        model: str,
        body: bytes,
        content_type: str = "application/json",
        stream: bool = False,
        prefs: Preferences = NO_PREFERENCES,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Call:
        """A ``Call`` with its deadline set from now (``timeout`` or the configured request timeout)."""
        budget = timeout if timeout is not None else self.config.dispatch.request_timeout
        return Call(
            endpoint=endpoint,
            model=model,
            body=body,
            content_type=content_type,
            stream=stream,
            prefs=prefs,
            request_id=request_id or uuid.uuid4().hex,
            deadline=self.now() + budget,
        )

    async def dispatch(self, call: Call) -> Reply | StreamReply:
        """Serve one call; raises ``RequestFailed`` (with the HTTP status it maps to) when it cannot."""
        if self._dispatcher is None:
            raise RouterError("the Router is not open: use `async with Router(config) as router:`")
        return await self._dispatcher.dispatch(call)

    def models(self) -> list[dict[str, Any]]:
        """Every model on offer, with provider count, price range, TEE and per-provider details."""
        return model_catalog(self.pool, self.now())

    # -- the library API --------------------------------------------------------------------------

    async def chat(self, *, model: str, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """A chat completion, as the OpenAI JSON object (``provider=`` takes routing preferences)."""
        reply = await self._json_call(Endpoint.CHAT, model, {"messages": messages, **params}, stream=False)
        assert isinstance(reply, Reply)
        return _decoded(reply.body)

    async def stream_chat(
        self, *, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """A streamed chat completion: each chunk as a dict, until the stream ends.

        A provider failure after the first chunk raises ``AllAttemptsFailed`` (there is no failover then).
        """
        reply = await self._json_call(
            Endpoint.CHAT, model, {"messages": messages, **params, "stream": True}, stream=True
        )
        assert isinstance(reply, StreamReply)
        try:
            async for event in reply.events():
                for line in event.splitlines():
                    if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                        continue
                    chunk = _decoded(line[5:])
                    if "error" in chunk:
                        error = chunk["error"]
                        message = error.get("message") if isinstance(error, dict) else error
                        raise AllAttemptsFailed(str(message), attempts=reply.attempts)
                    yield chunk
        finally:
            await reply.aclose()

    async def embeddings(self, *, model: str, input: str | list[str], **params: Any) -> dict[str, Any]:
        """Embeddings for ``input``, as the OpenAI JSON object."""
        reply = await self._json_call(Endpoint.EMBEDDINGS, model, {"input": input, **params}, stream=False)
        assert isinstance(reply, Reply)
        return _decoded(reply.body)

    async def _json_call(
        self, endpoint: Endpoint, model: str, payload: dict[str, Any], *, stream: bool
    ) -> Reply | StreamReply:
        prefs = parse_preferences(payload.pop("provider", None), {})
        body = json.dumps({"model": model, **payload}).encode()
        return await self.dispatch(
            self.new_call(endpoint, model=model, body=body, stream=stream, prefs=prefs)
        )

    # -- provider credentials ---------------------------------------------------------------------

    async def _authorize(self, info: ProviderInfo) -> str:
        if info.kind is ProviderKind.STATIC:
            return f"Bearer {info.api_key}" if info.api_key else ""
        assert self._tokens is not None
        return await self._tokens.authorization(info.id)

    def _forget_token(self, state: ProviderState) -> None:
        if self._tokens is not None and state.info.kind is ProviderKind.CHAIN:
            self._tokens.invalidate(state.id)


def _decoded(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise AllAttemptsFailed("the provider's reply is not JSON") from None
    if not isinstance(value, dict):
        raise AllAttemptsFailed("the provider's reply is not a JSON object")
    return value
