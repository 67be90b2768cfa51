"""``Router``: the composition root. It owns every resource and background task, and serves requests
in-process (the library API) or for the gateway, through one dispatch loop.

    async with Router(config) as router:
        reply = await router.chat(model="qwen-7b", messages=[{"role": "user", "content": "hi"}])
        async for chunk in router.stream_chat(model="qwen-7b", messages=[...]):
            ...
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

from router.config import RouterConfig
from router.discovery import ALLOW_PRIVATE_TARGETS, Discovery, Prober, static_infos
from router.dispatch import Dispatcher
from router.errors import AllAttemptsFailed, ConfigError, InvalidRequest, RouterError
from router.money.report import balance_report, providers_report
from router.observability.events import BreakerChanged, Event, Observer, RpcFailed
from router.policy.select import NO_PREFERENCES, Preferences, parse_preferences
from router.pool.accounting import Accounts
from router.pool.admission import Admission
from router.pool.catalog import model_catalog
from router.pool.providers import Exclusion, Pool, ProviderInfo, ProviderKind, ProviderState
from router.replies import Call, Endpoint, Reply, StreamReply, max_output
from router.transport.http import HttpTransport
from router.types import TxResult
from router.validate import validate_json
from router.verify.check import Finding
from router.verify.verifier import Verifier
from router.verify.warmup import TrustWarmup

if TYPE_CHECKING:
    import openai

    from router.chain.networks import Network
    from router.chain.session import SessionTokens
    from router.core import Core
    from router.embed.thread import LoopThread
    from router.money.balances import BalanceSync
    from router.money.funder import Funder
    from router.money.watcher import SettlementWatcher


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
        self._accounts: Accounts | None = None
        self._funder: Funder | None = None
        self._balances: BalanceSync | None = None
        self._watcher: SettlementWatcher | None = None
        self._verifier: Verifier | None = None
        self.wallet_address: str | None = None
        self._core: Core | None = None  # the in-process faces' (router.embed), made on first use
        self._thread: LoopThread | None = None
        self._serving = False

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
        self._serving = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._serving = False
        await self._stack.aclose()

    @property
    def serving(self) -> bool:
        """Open: inside ``async with`` (or ``start_in_thread()``), not yet closed."""
        return self._serving

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
        self._pool, self._admission = pool, admission
        verifier = self._verifier = Verifier(transport, config.verify, self.emit, clock=clock)
        background: list[Callable[[], Coroutine[Any, Any, None]]] = [
            functools.partial(Prober(pool, transport, config.discovery, self.emit).run, admission.wake),
            verifier.run,
        ]
        if config.network is not None:
            background += await self._open_chain(config.network, pool, transport, admission)
        self._dispatcher = Dispatcher(
            pool,
            admission,
            transport,
            self._authorize,
            config.dispatch,
            self.emit,
            on_misconfigured=self._forget_token,
            accounts=self._accounts,
            on_unfunded=self._unfunded,
            default_max_tokens=config.money.default_max_tokens,
            verifier=verifier,
            max_ejection_percent=config.health.max_ejection_percent,
        )
        if config.verify.verified_only:
            warmup = TrustWarmup(
                pool,
                self._dispatcher.dispatch,
                self.verdict,
                self.emit,
                clock=clock,
                interval=config.discovery.probe_interval,
            )
            background.append(warmup.run)
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        running = [tasks.create_task(run()) for run in background]
        # Runs before the TaskGroup's exit (the stack unwinds in reverse); the group then awaits them.
        self._stack.callback(lambda: [task.cancel() for task in running])

    async def _open_chain(
        self, network: Network, pool: Pool, transport: HttpTransport, admission: Admission
    ) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """Chain providers and the wallet's money: discovery, balances, the watcher and the funder."""
        # Here, not at module level: web3 takes about a second to import, and only a network needs it.
        from router.chain.client import ChainClient
        from router.chain.session import SessionTokens
        from router.chain.wallet import Wallet
        from router.money.balances import BalanceSync
        from router.money.funder import Funder
        from router.money.watcher import SettlementWatcher

        config = self.config
        money = config.money
        assert config.private_key is not None
        wallet = Wallet(config.private_key)
        self.wallet_address = user = wallet.address
        chain = await self._stack.enter_async_context(
            ChainClient(network, wallet, on_rpc_error=lambda url, detail: self.emit(RpcFailed(url, detail)))
        )
        tokens = self._tokens = SessionTokens(chain)
        discovery = Discovery(
            chain,
            transport,
            pool,
            config.discovery,
            allow_private=config.transport.allow_private_targets,
            warm=tokens.authorization,
            emit=self.emit,
        )
        await discovery.refresh()
        if discovery.refused_private:
            self._refused_at_open(network, discovery.refused_private, pool)
        accounts = self._accounts = Accounts(low_water=money.fund_below_neuron)
        funder = self._funder = Funder(
            chain,
            accounts,
            pool,
            money,
            user=user,
            clock=admission.now,
            emit=self.emit,
            on_funded=functools.partial(self._funded, admission),
        )
        accounts.on_low = funder.wake
        balances = self._balances = BalanceSync(
            chain,
            transport,
            pool,
            accounts,
            user=user,
            interval=money.balance_interval,
            authorize=tokens.authorization,
            timeout=config.discovery.models_timeout,
            emit=self.emit,
            on_synced=funder.wake,
        )
        await balances.sync()
        # The router opens ready: new providers get their first funds before the first request.
        await funder.cycle()
        watcher = self._watcher = SettlementWatcher(
            chain,
            accounts,
            user=user,
            start_block=balances.block + 1,
            confirmations=network.confirmations,
            interval=money.watch_interval,
            emit=self.emit,
            on_settled=lambda _provider: balances.ask(),
            on_resync=balances.ask,
        )
        return [discovery.run, balances.run, watcher.run, funder.run]

    @staticmethod
    def _refused_at_open(network: Network, refused: int, pool: Pool) -> None:
        """The URL guard refused providers for their loopback or private addresses: a ConfigError when
        that leaves nothing to route to (a devnet without ``allow_private_targets``), else a warning (a
        public network where a few providers registered such URLs; requests for models only they serve
        are told why, ``Dispatcher._candidates``)."""
        message = (
            f"the URL guard refused {refused} provider(s) on network {network.name!r} because their "
            f"registry URLs are loopback or private addresses; {ALLOW_PRIVATE_TARGETS}"
        )
        if not len(pool):
            raise ConfigError(f"nothing to route to: {message}")
        import structlog

        structlog.get_logger("router").warning("providers refused", detail=message)

    # -- what the gateway uses --------------------------------------------------------------------

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RouterError("the Router is not open: use `async with Router(config) as router:`")
        return self._pool

    def now(self) -> float:
        assert self._admission is not None
        return self._admission.now()

    @property
    def queued(self) -> int:
        """Requests waiting in the admission queue for a provider slot."""
        return self._admission.queued if self._admission is not None else 0

    @property
    def accounts(self) -> Accounts | None:
        """The wallet's sub-accounts as the router counts them (None without a network)."""
        return self._accounts

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
        max_output: int | None = None,
        verify_sync: bool = False,
    ) -> Call:
        """A ``Call`` with its deadline set from now (``timeout`` or the configured request timeout).
        ``[verify] verified_only`` holds for every call, whatever its own preferences say."""
        budget = timeout if timeout is not None else self.config.dispatch.request_timeout
        if self.config.verify.verified_only and not prefs.verified_only:
            prefs = dataclasses.replace(prefs, verified_only=True)
        return Call(
            endpoint=endpoint,
            model=model,
            body=body,
            content_type=content_type,
            stream=stream,
            prefs=prefs,
            request_id=request_id or uuid.uuid4().hex,
            deadline=self.now() + budget,
            max_output=max_output,
            verify_sync=verify_sync,
        )

    async def dispatch(self, call: Call) -> Reply | StreamReply:
        """Serve one call; raises ``RequestFailed`` (with the HTTP status it maps to) when it cannot."""
        if self._dispatcher is None:
            raise RouterError("the Router is not open: use `async with Router(config) as router:`")
        return await self._dispatcher.dispatch(call)

    async def verdict(self, reply: Reply | StreamReply) -> Finding | None:
        """Wait for the TEE verdict on ``reply`` (a stream's once it has ended); None if it is not
        checked (not sampled, or verification is off for it)."""
        if reply.verification is None:
            return None
        assert self._verifier is not None
        return await self._verifier.wait(reply.verification)

    def verification(self, chat_id: str) -> dict[str, Any] | None:
        """The verdict on a past response by its chat id (``x-zg-chat-id``), kept for up to 20 minutes;
        None when unknown, expired, not sampled, or not checked yet."""
        if self._verifier is None:
            raise RouterError("the Router is not open: use `async with Router(config) as router:`")
        return self._verifier.lookup(chat_id)

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
        request = {"model": model, **payload}
        # The gateway's checks: a field a provider would fail on is the caller's error, not the provider's.
        validate_json(endpoint, request)
        body = json.dumps(request).encode()
        call = self.new_call(
            endpoint,
            model=model,
            body=body,
            stream=stream,
            prefs=prefs,
            max_output=max_output(endpoint, payload),
        )
        return await self.dispatch(call)

    # -- in-process faces (router.embed) ----------------------------------------------------------

    def httpx_transport(self, *, sync: bool = False, package: str | None = None) -> Any:
        """An httpx transport serving every gateway route in-process (no socket, no gateway key):
        ``httpx2.AsyncClient(transport=router.httpx_transport())``. ``package`` picks the httpx flavour
        ("httpx2", which the openai SDK 3.x uses and the default when installed, or the classic "httpx").
        The async transport runs on the router's own loop; ``sync=True`` gives a ``BaseTransport`` for
        a router started with ``start_in_thread()``. A stream frees its provider slot when it is closed
        or read to the end."""
        from router.embed.transport import flavour, transport_classes

        async_transport, sync_transport = transport_classes(flavour(package))
        if sync:
            return sync_transport(self, self._embedded_core(), self._running_thread().loop)
        if self._thread is not None:
            # Its futures belong to the loop thread: awaited on another loop they would never finish.
            raise RouterError("this router runs on its own loop thread: ask for sync=True clients")
        return async_transport(self, self._embedded_core())

    @overload
    def openai_client(self, *, sync: Literal[False] = False, **kwargs: Any) -> openai.AsyncOpenAI: ...

    @overload
    def openai_client(self, *, sync: Literal[True], **kwargs: Any) -> openai.OpenAI: ...

    def openai_client(self, *, sync: bool = False, **kwargs: Any) -> openai.AsyncOpenAI | openai.OpenAI:
        """A ready ``openai.AsyncOpenAI`` over ``httpx_transport()`` (``sync=True``: an ``openai.OpenAI``
        for a router started with ``start_in_thread()``). ``kwargs`` go to the SDK; ``max_retries``
        defaults to 0, since the router has retried and failed over already."""
        from router.embed.sdk import openai_client

        return openai_client(self, sync=sync, **kwargs)

    def start_in_thread(self) -> LoopThread:
        """For code that is not async: ``with Router(config).start_in_thread() as router:`` opens the
        router on a loop thread of its own and closes it on exit (or at interpreter exit)."""
        from router.embed.thread import LoopThread

        if self._thread is None:
            self._thread = LoopThread(self)
        return self._thread

    def _embedded_core(self) -> Core:
        from router.core import Core

        if self._core is None:
            self._core = Core(self)
        return self._core

    def _running_thread(self) -> LoopThread:
        if self._thread is None:
            raise RouterError(
                "a sync transport needs the router on its own thread: "
                "use `with Router(config).start_in_thread() as router:`"
            )
        return self._thread

    # -- provider credentials ---------------------------------------------------------------------

    async def _authorize(self, info: ProviderInfo) -> str:
        if info.kind is ProviderKind.STATIC:
            return f"Bearer {info.api_key}" if info.api_key else ""
        assert self._tokens is not None
        return await self._tokens.authorization(info.id)

    def _forget_token(self, state: ProviderState) -> None:
        if self._tokens is not None and state.info.kind is ProviderKind.CHAIN:
            self._tokens.invalidate(state.id)

    # -- money ------------------------------------------------------------------------------------

    def balances(self) -> dict[str, Any]:
        """The wallet's ledger, every sub-account (balance, available, unsettled, pending refund,
        funding state) and the funding alerts."""
        accounts = self._money_accounts()
        block = self._watcher.cursor - 1 if self._watcher is not None else None
        return balance_report(accounts, self.wallet_address or "", block)

    def providers(self) -> list[dict[str, Any]]:
        """Every provider: models, prices, limits, health, in-flight, exclusions and our balance there."""
        return providers_report(self.pool, self._accounts, self.now())

    async def fund(self, provider: str, amount: int) -> TxResult:
        """Move ``amount`` neuron from the ledger to ``provider``'s sub-account (through the funder, so it
        never races an automatic top-up). Raises ``ChainError`` if the chain refuses, ``InvalidRequest``
        (404) for a provider that is neither in the pool nor one we hold a sub-account at."""
        self._money_accounts()
        assert self._funder is not None
        if not 0 < amount < 2**256:
            raise InvalidRequest(f"cannot fund {amount} neuron: the amount must be positive", param="amount")
        return await self._funder.fund(provider, amount)

    async def refund(self, providers: Sequence[str] | None = None) -> list[TxResult]:
        """Queue refunds of ``providers`` (default: every funded one) and stop funding them; a second call
        after the lock time releases matured refunds to the ledger."""
        accounts = self._money_accounts()
        assert self._funder is not None
        chosen = list(providers) if providers is not None else [a.provider for a in accounts if a.exists]
        return await self._funder.drain(chosen)

    def _money_accounts(self) -> Accounts:
        if self._accounts is None:
            raise ConfigError("this router has no wallet: money needs a network and a private key")
        return self._accounts

    def _unfunded(self, state: ProviderState) -> None:
        """A provider said our balance is too low: re-read it, and fund it if that is so."""
        if self._balances is not None and self._funder is not None:
            self._balances.ask()
            self._funder.wake()

    def _funded(self, admission: Admission, provider: str) -> None:
        state = self.pool.get(provider)
        if state is not None:
            state.excluded.pop(Exclusion.UNFUNDED, None)
        admission.wake()


def _decoded(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise AllAttemptsFailed("the provider's reply is not JSON") from None
    if not isinstance(value, dict):
        raise AllAttemptsFailed("the provider's reply is not a JSON object")
    return value
