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
from router.errors import AllAttemptsFailed, ConfigError, InvalidRequest, RouterError, clipped
from router.money.report import balance_report, providers_report
from router.observability.events import BreakerChanged, Event, Observer, RpcFailed
from router.pool.accounting import Accounts
from router.pool.admission import Admission
from router.pool.capacity import MemoryCapacity
from router.pool.catalog import model_catalog
from router.pool.holds import AccountHolds
from router.pool.providers import Exclusion, Lane, Pool, ProviderKind
from router.replies import Reply, StreamReply
from router.request import Call, Endpoint, Request, parse_payload
from router.transport.base import ProviderTransport
from router.transport.http import HttpTransport
from router.types import TxResult
from router.verify.check import Finding
from router.verify.verifier import Verifier
from router.verify.warmup import TrustWarmup

if TYPE_CHECKING:
    import openai

    from router.chain.client import ChainClient
    from router.chain.networks import Network
    from router.chain.session import SessionTokens
    from router.chain.wallet import Wallet
    from router.core import Core
    from router.embed.thread import LoopThread
    from router.money.wallets import WalletServices


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
        background: list[Callable[[], Coroutine[Any, Any, None]]] = [
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
        self._wallets = tuple(
            await asyncio.gather(
                *(
                    self._open_wallet(network, chain, token, pool, transport, admission)
                    for chain, token in zip(chains, tokens, strict=True)
                )
            )
        )
        background: list[Callable[[], Coroutine[Any, Any, None]]] = [discovery.run]
        for services in self._wallets:
            background += [services.balances.run, services.watcher.run, services.funder.run]
        return background

    async def _open_wallet(
        self,
        network: Network,
        chain: ChainClient,
        tokens: SessionTokens,
        pool: Pool,
        transport: ProviderTransport,
        admission: Admission,
    ) -> WalletServices:
        """One wallet's book, balance sync, funder and watcher, synced and funded before the router
        opens: new providers get their first funds before the first request."""
        from router.money.balances import BalanceSync
        from router.money.funder import Funder
        from router.money.wallets import WalletServices
        from router.money.watcher import SettlementWatcher

        config = self.config
        money = config.money
        assert chain.wallet is not None
        user = chain.wallet.address
        accounts = Accounts(low_water=money.fund_below_neuron)
        funder = Funder(
            chain,
            accounts,
            pool,
            money,
            user=user,
            clock=admission.now,
            emit=self.emit,
            on_funded=functools.partial(self._funded, user),
        )
        accounts.on_low = funder.wake
        balances = BalanceSync(
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
        await funder.cycle()
        watcher = SettlementWatcher(
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
        return WalletServices(user, chain, tokens, accounts, balances, watcher, funder)

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
        return Call(request, request_id or uuid.uuid4().hex, self.now() + budget, prefs)

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
        return {
            "wallets": [
                balance_report(w.accounts, w.address, w.watcher.cursor - 1) for w in self._money_wallets()
            ]
        }

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
        sub-account at."""
        services = self._wallet(wallet, "fund from")
        if not 0 < amount < 2**256:
            raise InvalidRequest(f"cannot fund {amount} neuron: the amount must be positive", param="amount")
        return await services.funder.fund(provider, amount)

    async def refund(
        self, providers: Sequence[str] | None = None, *, wallet: str | None = None
    ) -> dict[str, list[TxResult]]:
        """Queue refunds and stop funding there; a second call after the lock time releases matured
        refunds to the ledger. ``wallet`` (an address, any case) refunds that wallet's sub-accounts at
        ``providers`` (default: every one it holds); with no ``wallet``, every wallet refunds those of
        ``providers`` it holds a sub-account at (default: all of them). Returns each wallet's
        transactions by its address. ``InvalidRequest`` (404), and nothing sent, for a wallet that is not
        configured or a provider no wallet knows (neither in the pool nor holding our sub-account)."""
        targets = (self._wallet(wallet, "refund"),) if wallet is not None else self._money_wallets()
        if providers is not None and wallet is None:
            unknown = [p for p in providers if not any(w.funder.known(p) for w in targets)]
            if unknown:
                names = ", ".join(clipped(p, 42, quote=False) for p in unknown[:3])
                more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
                raise InvalidRequest(
                    f"not a provider in the pool, nor one we hold a sub-account at: {names}{more}",
                    status=404,
                    code="provider_not_found",
                    param="providers",
                )
        results: dict[str, list[TxResult]] = {}
        for services in targets:
            held = {a.provider.lower(): a.provider for a in services.accounts if a.exists}
            if providers is None:
                picked = list(held.values())
            elif wallet is not None:
                picked = list(providers)
            else:
                picked = [p for p in providers if p.lower() in held]
            results[services.address] = await services.funder.drain(picked) if picked else []
        return results

    def _money_wallets(self) -> tuple[WalletServices, ...]:
        if not self._wallets:
            raise ConfigError("this router has no wallet: money needs a network and a private key")
        return self._wallets

    def _wallet(self, wallet: str | None, action: str) -> WalletServices:
        """The configured wallet ``wallet`` names (any case), or the only one when it is None."""
        wallets = self._money_wallets()
        addresses = ", ".join(w.address for w in wallets)
        if wallet is None:
            if len(wallets) == 1:
                return wallets[0]
            raise InvalidRequest(
                f"this router has {len(wallets)} wallets: name the one to {action} in `wallet` ({addresses})",
                param="wallet",
            )
        found = self._wallet_of(wallet)
        if found is None:
            raise InvalidRequest(
                f"{clipped(wallet, 42, quote=False)} is not a wallet of this router; it has {addresses}",
                status=404,
                code="wallet_not_found",
                param="wallet",
            )
        return found

    def _wallet_of(self, address: str) -> WalletServices | None:
        """The services of the configured wallet at ``address`` (any case)."""
        key = address.lower()
        return next((w for w in self._wallets if w.address.lower() == key), None)

    def _unfunded(self, wallet: str, provider_id: str) -> None:
        """``provider_id`` said ``wallet``'s balance there is too low: re-read that wallet's balances (the
        provider's among them), and fund it if that is so."""
        services = self._wallet_of(wallet)
        if services is not None:
            services.balances.ask()
            services.funder.wake()

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
