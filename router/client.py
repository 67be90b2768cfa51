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
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

from router.config import RouterConfig
from router.discovery import ALLOW_PRIVATE_TARGETS, Discovery, Prober, static_infos
from router.dispatch import Dispatcher
from router.errors import AllAttemptsFailed, ConfigError, InvalidRequest, RouterError
from router.money import views
from router.money.report import providers_report
from router.observability.events import BreakerChanged, Event, Observer, RpcFailed
from router.pool.accounting import Accounts
from router.pool.admission import Admission
from router.pool.capacity import Capacity, MemoryCapacity
from router.pool.catalog import model_catalog
from router.pool.holds import AccountHolds
from router.pool.providers import Exclusion, Lane, Pool, ProviderKind
from router.replies import Reply, StreamReply
from router.request import Call, Endpoint, Request, new_request_id, parse_payload
from router.shared.leader import Leadership
from router.transport.base import ProviderTransport
from router.transport.http import HttpTransport
from router.types import TxResult
from router.verify.check import Finding
from router.verify.verifier import Verifier
from router.verify.warmup import TrustWarmup

if TYPE_CHECKING:
    import openai

    from router.chain.networks import Network
    from router.chain.wallet import Wallet
    from router.core import Core
    from router.embed.thread import LoopThread
    from router.money.wallets import WalletServices
    from router.shared.store import SharedStore


class Router:
    """Routes OpenAI-compatible requests over the 0G providers and static upstreams in ``config``."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        observers: Sequence[Observer] = (),
        transport: ProviderTransport | None = None,
    ) -> None:
        """``transport`` replaces the aiohttp one for every provider exchange (a ``FakeTransport`` in
        tests); the router enters and closes it."""
        self.config = config
        self._provider_transport = transport
        self._observers = list(observers)
        self._stack = AsyncExitStack()
        self._pool: Pool | None = None
        self._dispatcher: Dispatcher | None = None
        self._admission: Admission | None = None
        self._wallets: tuple[WalletServices, ...] = ()
        self._store: SharedStore | None = None  # with [shared] redis_url: what the replicas share
        self._leadership: Leadership | None = None
        self._verifier: Verifier | None = None
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
        keys = config.wallet_keys if config.network is not None else ()
        wallets = _wallets_of(keys)
        background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        capacity: Capacity
        if config.shared.enabled:
            capacity = await self._open_store(clock, background)
        else:
            capacity = MemoryCapacity(clock=clock, rate_margin=config.dispatch.rate_margin)
        pool = Pool(
            config.health,
            clock=clock,
            capacity=capacity,
            wallets=[wallet.address for wallet in wallets],
            on_breaker=lambda provider, state: self.emit(BreakerChanged(provider, state.value)),
        )
        pool.replace(ProviderKind.STATIC, static_infos(config.static_upstreams))
        transport = await self._stack.enter_async_context(
            self._provider_transport or HttpTransport(config.transport)
        )
        admission = await self._stack.enter_async_context(Admission(capacity, clock=clock))
        self._pool, self._admission = pool, admission
        verifier = self._verifier = Verifier(transport, config.verify, self.emit, clock=clock)
        background += [
            functools.partial(Prober(pool, transport, config.discovery, self.emit).run, admission.wake),
            verifier.run,
        ]
        holds = None
        if config.network is not None:
            background += await self._open_chain(config.network, wallets, pool, transport, admission)
            holds = AccountHolds({w.address.lower(): w.accounts for w in self._wallets})
        self._dispatcher = Dispatcher(
            pool,
            admission,
            transport,
            self._authorize,
            config.dispatch,
            self.emit,
            holds=holds,
            books=self._book,
            on_misconfigured=self._forget_token,
            on_unfunded=lambda lane: self._unfunded(lane.wallet or "", lane.provider.id),
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

    async def _open_store(
        self, clock: Callable[[], float], background: list[Callable[[], Coroutine[Any, Any, None]]]
    ) -> Capacity:
        """The Redis the replicas share (``[shared]``), and lane capacity counted there. Imported here:
        without Redis, redis-py is never loaded."""
        from router.shared.capacity import RedisCapacity
        from router.shared.store import SharedStore

        store = self._store = await self._stack.enter_async_context(
            SharedStore(self.config.shared, emit=self.emit)
        )
        capacity = RedisCapacity(store, clock=clock, rate_margin=self.config.dispatch.rate_margin)
        # Unwound after the background tasks end, before the store closes: pending releases go out.
        self._stack.push_async_callback(capacity.aclose)
        background += [store.run, capacity.run]
        return capacity

    async def _open_chain(
        self,
        network: Network,
        wallets: Sequence[Wallet],
        pool: Pool,
        transport: ProviderTransport,
        admission: Admission,
    ) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """Chain providers and every wallet's money: discovery (once), and per wallet its chain client,
        session tokens, balances, settlement watcher and funder."""
        # Here, not at module level: web3 takes about a second to import, and only a network needs it.
        from router.chain.client import ChainClient
        from router.chain.session import SessionTokens

        def rpc_failed(url: str, detail: str) -> None:
            self.emit(RpcFailed(url, detail))

        chains = [
            await self._stack.enter_async_context(ChainClient(network, wallet, on_rpc_error=rpc_failed))
            for wallet in wallets
        ]
        tokens = [SessionTokens(chain) for chain in chains]
        store = self._store
        if store is not None:
            leadership = self._leadership = Leadership(
                store,
                self.config.shared,
                emit=self.emit,
                clock=admission.now,
                elected=self._take_lead,
                duties=self._lead,
            )
            self._stack.push_async_callback(leadership.aclose)

        async def warm(provider: str) -> None:
            await asyncio.gather(*(t.authorization(provider) for t in tokens))

        discovery = Discovery(
            chains[0],
            transport,
            pool,
            self.config.discovery,
            allow_private=self.config.transport.allow_private_targets,
            warm=warm,
            emit=self.emit,
        )
        await discovery.refresh()
        if discovery.refused_private:
            self._refused_at_open(network, discovery.refused_private, pool)
        from router.money.wallets import follow, open_wallet

        self._wallets = tuple(
            await asyncio.gather(
                *(
                    open_wallet(
                        self.config,
                        network,
                        chain,
                        token,
                        pool,
                        transport,
                        clock=admission.now,
                        emit=self.emit,
                        on_funded=self._funded,
                        shared=(store, self._leadership) if store and self._leadership else None,
                    )
                    for chain, token in zip(chains, tokens, strict=True)
                )
            )
        )
        background: list[Callable[[], Coroutine[Any, Any, None]]] = [discovery.run]
        if self._leadership is None:
            for services in self._wallets:
                background += [services.balances.run, services.watcher.run, services.funder.run]
            return background
        assert store is not None
        store.subscribe(store.key("wake", "funder"), self._woken)
        if not await self._leadership.start():
            for services in self._wallets:
                await follow(services)
        background.append(self._leadership.run)
        for services in self._wallets:
            assert services.book is not None
            background.append(services.book.run)
            # Its last round after the background tasks end (and before the lease goes): what this
            # replica spent, and as the leader the book and settlements, reach the others.
            self._stack.push_async_callback(services.book.load)
        return background

    async def _take_lead(self) -> None:
        await asyncio.gather(*(services.take_lead() for services in self._wallets))

    async def _lead(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for services in self._wallets:
                tasks.create_task(services.lead())

    def _woken(self, wallet: str) -> None:
        """A follower asked the leader's funder to look at ``wallet`` (``P:wake:funder``)."""
        services = self._wallet_of(wallet)
        if services is not None and self._leadership is not None and self._leadership.is_leader:
            services.balances.ask()
            services.funder.wake()

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
    def leadership(self) -> Leadership | None:
        """With ``[shared] redis_url`` and a network: whether this replica leads (and its fence)."""
        return self._leadership

    @property
    def wallets(self) -> tuple[WalletServices, ...]:
        """Each configured wallet's services (its book, funder, balance sync, watcher), in config
        order; empty without a network."""
        return self._wallets

    def subscribe(self, observer: Observer) -> None:
        """Receive every event (requests, attempts, refreshes) from now on."""
        self._observers.append(observer)

    def emit(self, event: Event) -> None:
        for observer in self._observers:
            observer(event)

    def new_call(
        self, request: Request, *, request_id: str | None = None, timeout: float | None = None
    ) -> Call:
        """``request`` (from ``router.request``'s parsers) put in flight: a new id unless given, a
        deadline from now (``timeout`` or the configured request timeout). ``[verify] verified_only``
        holds for every call, whatever the request's own preferences say."""
        budget = timeout if timeout is not None else self.config.dispatch.request_timeout
        prefs = request.prefs
        if self.config.verify.verified_only and not prefs.verified_only:
            prefs = dataclasses.replace(prefs, verified_only=True)
        if self.config.verify.require_attestation and prefs.verified_only:
            prefs = dataclasses.replace(prefs, require_attestation=True)
        return Call(request, request_id or new_request_id(), self.now() + budget, prefs)

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
        # The gateway's parser: a field a provider would fail on (or a wrong `provider` preference) is
        # the caller's error, the same InvalidRequest the gateway answers.
        request = parse_payload(endpoint, {"model": model, **payload})
        if request.stream is not stream:
            # chat(stream=True) would hand back a stream where a whole completion is promised.
            raise InvalidRequest(
                "`stream` must be false here: use stream_chat() for a streamed completion", param="stream"
            )
        return await self.dispatch(self.new_call(request))

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

    async def _authorize(self, lane: Lane) -> str:
        info = lane.provider.info
        if info.kind is ProviderKind.STATIC:
            return f"Bearer {info.api_key}" if info.api_key else ""
        return await self._services(lane.wallet).tokens.authorization(info.id)

    def _forget_token(self, lane: Lane) -> None:
        if lane.wallet is not None:
            self._services(lane.wallet).tokens.invalidate(lane.provider.id)

    def _services(self, wallet: str | None) -> WalletServices:
        """The services of a lane's wallet."""
        services = self._wallet_of(wallet) if wallet is not None else None
        if services is None:
            raise RouterError(f"no wallet {wallet} is configured")
        return services

    def _book(self, wallet: str) -> Accounts | None:
        """The sub-accounts of ``wallet`` (any case), if it is one of ours."""
        services = self._wallet_of(wallet)
        return services.accounts if services is not None else None

    # -- money ------------------------------------------------------------------------------------

    def balances(self) -> dict[str, Any]:
        """``{"wallets": [...]}``: for each wallet, in config order, its ledger, every sub-account
        (balance, available, unsettled, pending refund, funding state) and its funding alerts."""
        return views.balances(self._wallets)

    def providers(self) -> list[dict[str, Any]]:
        """Every provider: models, prices, limits, health, in-flight, exclusions and each wallet's balance
        there (``balances``, by wallet address)."""
        return providers_report(self.pool, {w.address: w.accounts for w in self._wallets}, self.now())

    async def fund(self, provider: str, amount: int, *, wallet: str | None = None) -> TxResult:
        """Move ``amount`` neuron from ``wallet``'s ledger to its sub-account at ``provider`` (through that
        wallet's funder, so it never races an automatic top-up). ``wallet`` is an address in any case; a
        router of one wallet needs none. Raises ``ChainError`` if the chain refuses, ``InvalidRequest``:
        400 for no ``wallet`` when there are several, 404 for a wallet that is not configured
        (``wallet_not_found``) or a provider that is neither in the pool nor one the wallet holds a
        sub-account at; 409 ``not_leader`` on a replica that is not the leader of those sharing Redis."""
        return await views.fund(self._wallets, self._leadership, provider, amount, wallet)

    async def refund(
        self, providers: Sequence[str] | None = None, *, wallet: str | None = None
    ) -> dict[str, list[TxResult]]:
        """Queue refunds and stop funding there; a second call after the lock time releases matured
        refunds to the ledger. ``wallet`` (an address, any case) refunds that wallet's sub-accounts at
        ``providers`` (default: every one it holds); with no ``wallet``, every wallet refunds those of
        ``providers`` it holds a sub-account at (default: all of them). Returns each wallet's
        transactions by its address. ``InvalidRequest`` (404), and nothing sent, for a wallet that is not
        configured or a provider no wallet knows (neither in the pool nor holding our sub-account); 409
        ``not_leader`` on a replica that is not the leader of those sharing Redis."""
        return await views.refund(self._wallets, self._leadership, providers, wallet)

    def _wallet_of(self, address: str) -> WalletServices | None:
        return views.wallet_of(self._wallets, address)

    def shared_status(self) -> dict[str, Any] | None:
        """``{"mode": "shared"|"local", "replicas": N, "leader": bool}`` with ``[shared] redis_url``
        (``leader``: this replica runs the funder, balance sync and watcher), else None."""
        if self._store is None:
            return None
        leading = self._leadership is not None and self._leadership.is_leader
        return {**self._store.status(), "leader": leading}

    def _unfunded(self, wallet: str, provider_id: str) -> None:
        """``provider_id`` said ``wallet``'s balance there is too low: re-read that wallet's balances (the
        provider's among them), and fund it if that is so."""
        services = self._wallet_of(wallet)
        if services is not None:
            services.balances.ask()
            services.wake_funder()

    def _funded(self, wallet: str, provider: str) -> None:
        """``wallet``'s sub-account at ``provider`` was funded: its lane there serves again."""
        state = self.pool.get(provider)
        lane = state.lane(wallet) if state is not None else None
        if lane is not None:
            lane.excluded.pop(Exclusion.UNFUNDED, None)
        if self._admission is not None:
            self._admission.wake()


def _decoded(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise AllAttemptsFailed("the provider's reply is not JSON") from None
    if not isinstance(value, dict):
        raise AllAttemptsFailed("the provider's reply is not a JSON object")
    return value


def _wallets_of(keys: Sequence[str]) -> list[Wallet]:
    """The signers of the configured wallet keys (eth-account, loaded only when there are any)."""
    if not keys:
        return []
    from router.chain.wallet import Wallet

    return [Wallet(key) for key in keys]
