"""One simulated provider broker: an aiohttp server on 127.0.0.1 speaking the real provider protocol.

Checks run in the broker's order with its statuses and bodies (protocol.md §4.2): the provider-wide caps
(global concurrency, RPM, TPM: 503 with ``Retry-After``), body size (413), session token (400), per-wallet
RPM, TPM or IPM, concurrency and KV budget (429; ``limits.py``), model (400), account and balance (400).
Responses carry ``ZG-Res-Key``, ``Provider`` and ``x-ratelimit-*`` (``anthropic-ratelimit-*`` on the
Anthropic route, whose 429 bodies are wrapped as Anthropic's errors); each is signed with the TEE key over
``sha256(request as forwarded):sha256(response bytes)`` and served by ``signature/{id}``. An admin port
serves fault knobs, limits (both settable at runtime) and counters.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from cachetools import TTLCache

from router.chain.client import ChainClient
from router.chain.devtools import SettlementStatus
from router.chain.wallet import Wallet
from router.devnet.simulator import anthropic_messages, payloads, quote, synth
from router.devnet.simulator.admin import GLOBAL_CAPS, admin_app
from router.devnet.simulator.auth import SessionRejected, SessionValidator
from router.devnet.simulator.billing import Billing, BillingRefused
from router.devnet.simulator.faults import ERROR_BODIES, FaultPlan, Faults
from router.devnet.simulator.limits import (
    GlobalLimits,
    LimitExceeded,
    ProviderBusy,
    RateLimits,
    Usage,
    WalletLimits,
)
from router.devnet.simulator.payloads import Payload
from router.devnet.simulator.spec import ProviderSpec
from router.errors import ChainError, ConfigError
from router.types import Account

MAX_BODY_BYTES = 32 * 1024 * 1024
SIGNATURE_TTL = 20 * 60.0
_MAX_SIGNATURES = 100_000
_SHUTDOWN_TIMEOUT = 0.5
_VALIDATION_CONTEXT = "Provider proxy: handle proxied service, validate request: "

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BilledHandler = Callable[[web.Request, Usage], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class _Call:
    """An admitted billed request on its way to a route's producer."""

    request: web.Request
    body: bytes
    payload: Payload
    user: str
    rate_headers: dict[str, str]
    provider: str
    usage: Usage
    chat_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    fault: str | None = None
    signing: str | None = None
    anthropic: bool = False  # an Anthropic route: its errors and rate-limit headers are Anthropic's

    @property
    def headers(self) -> dict[str, str]:
        """The headers of a 200: rate limits, the chat key, and (only on success) ``Provider``."""
        return {**self.rate_headers, "ZG-Res-Key": self.chat_id, "Provider": self.provider}


Parser = Callable[[bytes, str], "Payload | str"]
Producer = Callable[[_Call], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class SimulatorStats:
    """What the simulator saw, for tests and benchmarks to assert on."""

    served: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    settlement_errors: int = 0


class ProviderSimulator:
    """Serves one provider on ``url`` until closed; settles its users' fees every ``settle_interval`` s.

    ``settle_interval`` None settles only when ``settle_now()`` is called.
    """

    def __init__(
        self,
        chain: ChainClient,
        tee_signer: Wallet,
        spec: ProviderSpec,
        *,
        settle_interval: float | None = 5.0,
        port: int = 0,
    ) -> None:
        self.spec = spec
        self._settle_interval = settle_interval
        self.address = chain.sender.wallet.address
        self._tee_signer = tee_signer
        self._port = port
        self.validator = SessionValidator(self.address, self._read_account)
        self.limits = WalletLimits(
            spec.limits,
            overrides=spec.overrides,
            service_type=spec.service_type,
            context_length=spec.context_length,
        )
        self.global_limits = GlobalLimits(
            max_concurrent=spec.max_global_concurrent,
            requests_per_minute=spec.global_requests_per_minute,
            tokens_per_minute=spec.global_tokens_per_minute,
            service_type=spec.service_type,
        )
        self.billing = Billing(
            chain, tee_signer, input_price=spec.input_price, output_price=spec.output_price
        )
        self.stats = SimulatorStats()
        self.faults = FaultPlan(spec.faults)
        self._chain = chain
        # Capped and expiring, oldest out first: a long benchmark must not grow it without bound.
        self._signatures: TTLCache[str, dict[str, str]] = TTLCache(
            maxsize=_MAX_SIGNATURES, ttl=SIGNATURE_TTL, timer=time.monotonic
        )
        self._settle_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._admin: web.AppRunner | None = None
        self._settler: asyncio.Task[None] | None = None
        self.url = ""
        self.admin_url = ""

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        routes: dict[str, tuple[Parser, Producer]] = {
            "chat/completions": (payloads.chat, self._produce_chat),
            "embeddings": (payloads.embeddings, self._produce_embeddings),
            "images/generations": (payloads.images, self._produce_images),
            "images/edits": (payloads.image_edits, self._produce_image_edits),
            "audio/transcriptions": (payloads.transcription, self._produce_transcription),
        }
        if self.spec.anthropic:
            # Only a model that speaks Anthropic's API natively; on others the route is unsupported.
            routes["messages"] = (payloads.chat, self._produce_messages)
        for route, (parse, produce) in routes.items():
            billed = functools.partial(
                self._billed, parse=parse, produce=produce, anthropic=route == "messages"
            )
            handler = self._guarded(billed)
            # A redundant /v1 after the prefix is tolerated, as the broker does.
            app.router.add_post(f"/v1/proxy/{route}", handler)
            app.router.add_post(f"/v1/proxy/v1/{route}", handler)
        app.router.add_get("/v1/proxy/signature/{chat_id}", self._signature)
        app.router.add_get("/v1/proxy/v1/signature/{chat_id}", self._signature)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/quote", self._quote)
        app.router.add_get("/v1/user/{user}/unsettledfee", self._unsettled_fee)
        app.router.add_route("*", "/v1/proxy/{tail:.*}", self._unsupported)
        # Closing does not wait for slow (fault-delayed) requests: a provider that goes away just goes.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await self._site.start()
        self._port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self._port}"
        self._admin = web.AppRunner(admin_app(self), access_log=None)
        await self._admin.setup()
        await web.TCPSite(self._admin, "127.0.0.1", 0).start()
        self.admin_url = f"http://127.0.0.1:{self._admin.addresses[0][1]}"
        if self.spec.faults.down:
            await self._site.stop()
        if self._settle_interval is not None:
            self._settler = asyncio.create_task(self._settle_forever(self._settle_interval))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._settler is not None:
            self._settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settler
        for runner in (self._admin, self._runner):
            if runner is not None:
                await runner.cleanup()

    async def set_faults(self, faults: Faults) -> None:
        """Apply new knobs now; ``down`` closes the listening socket and every open connection (or
        re-opens the socket on the same port)."""
        was_down = self.faults.faults.down
        self.faults.set(faults)
        if faults.down == was_down or self._runner is None:
            return
        if faults.down:
            assert self._site is not None
            await self._site.stop()
            # A dead provider also drops the connections it had, idle keep-alive ones included.
            if self._runner.server is not None:
                for connection in self._runner.server.connections:
                    connection.force_close()
        else:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self._port)
            await self._site.start()

    def set_limits(self, changes: Mapping[str, Any]) -> ProviderSpec:
        """Apply new limits now: any RateLimits field (for every wallet without an override) and the
        provider-wide caps ``max_global_concurrent``, ``global_requests_per_minute`` and
        ``global_tokens_per_minute``; raises ConfigError on unknown names or bad values. Buckets keep their
        levels. Returns the new spec (``/v1/models`` advertises it)."""
        known = [*RateLimits().as_dict(), *GLOBAL_CAPS]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ConfigError(f"unknown limits: {', '.join(unknown)}; known: {', '.join(known)}")
        caps = {name: changes[name] for name in GLOBAL_CAPS if name in changes}
        for name, value in caps.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} takes a whole number")
        limits = self.spec.limits.updated({k: v for k, v in changes.items() if k not in GLOBAL_CAPS})
        spec = replace(self.spec, limits=limits, **caps)
        self.spec = spec
        self.limits.reconfigure(spec.limits)
        self.global_limits.reconfigure(
            max_concurrent=spec.max_global_concurrent,
            requests_per_minute=spec.global_requests_per_minute,
            tokens_per_minute=spec.global_tokens_per_minute,
        )
        return spec

    async def settle_now(self) -> dict[str, SettlementStatus]:
        """Run one settlement cycle now (tests do this instead of waiting for the cadence)."""
        async with self._settle_lock:
            return await self.billing.settle()

    async def _settle_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.settle_now()
            except ChainError:
                # A failed cycle is retried on the next tick, as the broker does.
                self.stats.settlement_errors += 1

    async def _read_account(self, user: str) -> Account | None:
        return await self._chain.get_account(user, self.address)

    # -- billed routes ---------------------------------------------------------------------------

    def _guarded(self, handler: BilledHandler) -> Handler:
        """The checks before any billed route: the provider-wide caps first, then the body size."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                with self.global_limits.enter() as usage:
                    try:
                        return await handler(request, usage)
                    except web.HTTPRequestEntityTooLarge:
                        return self._refuse(
                            413, {"error": "Request body size exceeds the maximum allowed size of 32MB"}
                        )
            except ProviderBusy as exc:
                # Refused before the token is checked: counted for the wallet the token names.
                claimed = _claimed_wallet(request.headers.get("Authorization"))
                if claimed is not None:
                    self.limits.count_rejection(claimed, exc.kind)
                return self._refuse(503, exc.body, {"Retry-After": str(exc.retry_after)})

        return guarded

    async def _billed(
        self, request: web.Request, usage: Usage, parse: Parser, produce: Producer, *, anthropic: bool
    ) -> web.StreamResponse:
        """The broker's checks for every billed route, then the route's producer. On an ``anthropic``
        route the rate-limit headers and the 429 bodies are as the broker sends them there."""
        body = await request.read()
        try:
            user = await self.validator.validate(request.headers.get("Authorization"))
        except SessionRejected as exc:
            return self._refuse(400, {"error": _VALIDATION_CONTEXT + str(exc)})
        # Parsed before the limits only to weigh it for the KV budget; a bad body is refused after them.
        payload = parse(body, request.headers.get("Content-Type", ""))
        kv_budget = self.limits.limits_for(user).kv_token_budget
        kv_tokens = _in_flight_tokens(payload, anthropic=anthropic) if kv_budget else 1
        rate_headers = self.limits.headers(user)
        if anthropic:
            rate_headers = anthropic_messages.rate_headers(rate_headers)
        try:
            with self.limits.admit(user, usage, kv_tokens=kv_tokens):
                if isinstance(payload, str):
                    return self._refuse(400, {"error": payload})
                model = payload.get("model") or self.spec.model
                if str(model).lower() != self.spec.model.lower():
                    message = f'model not supported: requested "{model}", accepted: ["{self.spec.model}"]'
                    return self._refuse(400, {"error": _VALIDATION_CONTEXT + message})
                try:
                    await self.billing.check(user)
                except BillingRefused as exc:
                    return self._refuse(400, {"error": _VALIDATION_CONTEXT + str(exc)})
                call = _Call(request, body, payload, user, rate_headers, self.address, usage)
                call.anthropic = anthropic
                return await self._faulty(request, produce, call)
        except LimitExceeded as exc:
            refused = anthropic_messages.error_body(exc.body) if anthropic else exc.body
            return self._refuse(429, refused, rate_headers)

    async def _faulty(self, request: web.Request, produce: Producer, call: _Call) -> web.StreamResponse:
        """Apply this request's drawn fault: early ones here, in-body ones in the producer."""
        knobs = self.faults.faults
        call.fault = self.faults.draw()
        call.signing = self.faults.draw_signing()
        if knobs.latency:
            await asyncio.sleep(knobs.latency)
        if call.fault == "reset_before_headers":
            return self._reset(request)
        if call.fault in ("error_500", "error_502", "error_503"):
            status = int(call.fault.removeprefix("error_"))
            return self._refuse(status, ERROR_BODIES[status])
        if call.fault == "rate_limit_storm":
            storm = {"error": {"type": "rate_limit_error", "message": "Rate limit exceeded."}}
            storm = anthropic_messages.error_body(storm) if call.anthropic else storm
            return self._refuse(429, storm, call.rate_headers)
        self.stats.served += 1
        call.usage.served = True
        return await produce(call)

    async def _produce_chat(self, call: _Call) -> web.StreamResponse:
        payload = call.payload
        if (refusal := synth.rejection(payload)) is not None:
            # The model server's own 400, unbilled; the broker passes it through (protocol.md §4.2).
            return self._refuse(400, refusal)
        prepared = {**payload, "model": self.spec.model}
        if payload.get("stream"):
            prepared["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        forwarded = call.body if prepared == payload else json.dumps(prepared).encode()
        completion = synth.complete(prepared)
        # Billed up front: the broker bills what was generated even if the client goes away. The TPM
        # buckets are debited the same total when the request leaves (a stream: when it ends).
        self.billing.charge(call.user, completion.prompt_tokens, completion.completion_tokens)
        call.usage.tokens += completion.prompt_tokens + completion.completion_tokens
        chat_id, fault = call.chat_id, call.fault
        if payload.get("stream"):
            events = synth.stream_events(completion, chat_id=chat_id, model=self.spec.model)
            if fault == "malformed_json":
                events[1] = b"data: {not json\n\n"
            stream_headers = {**call.headers, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
            return await self._stream(call, events, stream_headers, forwarded)
        out = json.dumps(synth.response_body(completion, chat_id=chat_id, model=self.spec.model)).encode()
        return await self._whole(call, out, forwarded)

    async def _produce_messages(self, call: _Call) -> web.StreamResponse:
        """Anthropic's Messages API, billed, limited and signed as chat is."""
        payload = call.payload
        if (refusal := anthropic_messages.rejection(payload)) is not None:
            return self._refuse(400, refusal)
        prepared = {**payload, "model": self.spec.model}
        forwarded = call.body if prepared == payload else json.dumps(prepared).encode()
        completion = anthropic_messages.complete(prepared)
        self.billing.charge(call.user, completion.prompt_tokens, completion.completion_tokens)
        call.usage.tokens += completion.prompt_tokens + completion.completion_tokens
        message_id, model = f"msg_{call.chat_id}", self.spec.model
        if payload.get("stream"):
            events = anthropic_messages.stream_events(completion, message_id=message_id, model=model)
            if call.fault == "malformed_json":
                events[1] = b"event: ping\ndata: {not json\n\n"
            stream_headers = {**call.headers, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
            return await self._stream(call, events, stream_headers, forwarded)
        out = json.dumps(anthropic_messages.message_body(completion, message_id=message_id, model=model))
        return await self._whole(call, out.encode(), forwarded)

    async def _whole(self, call: _Call, out: bytes, forwarded: bytes) -> web.StreamResponse:
        """A whole JSON reply, signed over ``forwarded``, with this request's in-body fault applied."""
        if call.fault == "malformed_json":
            out = out[: len(out) // 2]
        if call.fault in ("drop_mid_stream", "stall_body"):
            # Headers and half the body go out; then the connection drops or the rest never comes.
            json_headers = {
                **call.headers,
                "Content-Type": "application/json",
                "Content-Length": str(len(out)),
            }
            return await self._stream(call, [out[: len(out) // 2]], json_headers, forwarded)
        self._sign(call, _sha256(forwarded), out)
        sent = _altered([out])[0] if call.signing == "alter_after_signing" else out
        return web.Response(body=sent, headers={**call.headers, "Content-Type": "application/json"})

    async def _produce_embeddings(self, call: _Call) -> web.StreamResponse:
        body, tokens = synth.embedding_body(call.payload, model=self.spec.model)
        self.billing.charge(call.user, tokens, 0)
        call.usage.tokens += tokens
        out = json.dumps(body).encode()
        self._sign(call, _sha256(call.body), out)
        return web.Response(body=out, headers={**call.headers, "Content-Type": "application/json"})

    async def _produce_images(self, call: _Call) -> web.StreamResponse:
        return self._images_reply(call, synth.images(call.payload))

    async def _produce_image_edits(self, call: _Call) -> web.StreamResponse:
        return self._images_reply(call, synth.edited_images(call.payload))

    def _images_reply(self, call: _Call, pictures: list[bytes]) -> web.Response:
        """Generated or edited images: billed per image at the output price (protocol.md §4.5), counted
        against the IPM bucket, served base64-encoded (the broker asks its model server for b64_json)."""
        self.billing.charge(call.user, 0, len(pictures))
        call.usage.images += len(pictures)
        data = [{"b64_json": base64.b64encode(p).decode()} for p in pictures]
        out = json.dumps({"created": int(time.time()), "data": data}).encode()
        # Image signatures cover each image, not the JSON around them (protocol.md §5.3).
        image_hashes = ",".join(hashlib.sha256(p).hexdigest() for p in pictures)
        self._sign_text(call, f"{_sha256(call.body)}:{image_hashes}")
        return web.Response(body=out, headers={**call.headers, "Content-Type": "application/json"})

    async def _produce_transcription(self, call: _Call) -> web.StreamResponse:
        text = synth.transcription_text(call.payload["file"])
        self.billing.charge(call.user, 0, len(text.split()))
        call.usage.tokens += len(text.split())
        out = json.dumps({"text": text}).encode()
        self._sign(call, _sha256(call.body), out)
        return web.Response(body=out, headers={**call.headers, "Content-Type": "application/json"})

    async def _stream(
        self, call: _Call, parts: list[bytes], headers: dict[str, str], forwarded: bytes
    ) -> web.StreamResponse:
        request, fault = call.request, call.fault
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        sent = _altered(parts) if call.signing == "alter_after_signing" else parts
        for index, part in enumerate(sent):
            if index and self.faults.faults.chunk_delay:
                await asyncio.sleep(self.faults.faults.chunk_delay)
            await response.write(part)
            if fault == "drop_mid_stream":
                return self._reset(request, response)
            if fault == "stall_body":
                await asyncio.sleep(self.faults.faults.stall_seconds)
        await response.write_eof()
        self._sign(call, _sha256(forwarded), b"".join(parts))
        return response

    @staticmethod
    def _reset(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
        """Drop the connection at once (no response, or a truncated one)."""
        if request.transport is not None:
            request.transport.abort()
        return response or web.Response()

    def _sign(self, call: _Call, request_sha256: str, response_bytes: bytes) -> None:
        self._sign_text(call, f"{request_sha256}:{_sha256(response_bytes)}")

    def _sign_text(self, call: _Call, text: str) -> None:
        if call.signing == "withhold_signature":
            return
        signer = _IMPOSTOR if call.signing == "sign_wrong_key" else self._tee_signer
        signature = "0x" + signer.sign_personal(text.encode()).hex()
        self._signatures[call.chat_id.lower()] = {
            "text": text,
            "signature": signature,
            "signing_address": self._tee_signer.address,
            "signing_algo": "ecdsa",
        }

    # -- free routes -----------------------------------------------------------------------------

    async def _signature(self, request: web.Request) -> web.Response:
        entry = self._signatures.get(request.match_info["chat_id"].lower())
        if entry is None:
            return web.json_response({"error": "chat_id_not_found"}, status=400)
        return web.json_response(entry)

    async def _quote(self, request: web.Request) -> web.Response:
        # `legacy=false` asks for the newer layout; a broker that has not built one answers the legacy
        # quote, as this one always does. A `wrong_quote` is another TEE's: it names and signs its key.
        signer = _IMPOSTOR if self.faults.draw_wrong_quote() else self._tee_signer
        body, headers = quote.quote_reply(signer)
        return web.Response(body=body, headers=headers, content_type="text/plain", charset="utf-8")

    async def _models(self, request: web.Request) -> web.Response:
        cfg = self.spec
        # The route has no auth: it advertises the defaults, never a wallet's override.
        limits = cfg.limits
        model = {
            "id": cfg.model,
            "object": "model",
            "type": cfg.service_type,
            "context_length": cfg.context_length,
            "pricing": {"prompt": str(cfg.input_price), "completion": str(cfg.output_price)},
            "verifiability": cfg.verifiability,
            "supported_formats": ["openai", "anthropic"] if cfg.anthropic else ["openai"],
            "tee_attested": True,
            "rate_limits": {
                "requests_per_minute": limits.requests_per_minute,
                "burst": limits.burst,
                "max_concurrent_requests": limits.max_concurrent,
                "tokens_per_minute": limits.tokens_per_minute,
                "tokens_burst": (
                    limits.token_bucket_size(cfg.context_length) if limits.tokens_per_minute else 0
                ),
                "images_per_minute": limits.images_per_minute,
                "images_burst": limits.image_bucket_size() if limits.images_per_minute else 0,
            },
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _unsettled_fee(self, request: web.Request) -> web.Response:
        try:
            caller = await self.validator.validate(request.headers.get("Authorization"))
        except SessionRejected as exc:
            return web.json_response({"error": str(exc)}, status=400)
        user = request.match_info["user"]
        if caller.lower() != user.lower():
            return web.json_response({"error": "you can only query your own unsettled fee"}, status=403)
        return web.json_response({"userAddress": user, "unsettledFee": str(self.billing.unsettled(user))})

    async def _unsupported(self, request: web.Request) -> web.Response:
        return self._refuse(400, {"error": "endpoint not supported"})

    def _refuse(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> web.Response:
        self.stats.refused[status] = self.stats.refused.get(status, 0) + 1
        return web.json_response(body, status=status, headers=headers)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _in_flight_tokens(payload: Payload | str, *, anthropic: bool = False) -> int:
    """What a request holds of its wallet's KV budget: its prompt tokens plus the most it may generate
    (its ``max_tokens`` for each choice, or what it will generate when it sets none)."""
    if isinstance(payload, str):
        return 1
    if isinstance(payload.get("messages"), list):
        if anthropic:
            if anthropic_messages.rejection(payload) is not None:
                return 1
            completion = anthropic_messages.complete(payload)
        elif synth.rejection(payload) is not None:
            return 1
        else:
            completion = synth.complete(payload)
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or 0
        most = max(completion.completion_tokens, limit * len(completion.choices))
        return completion.prompt_tokens + most
    if isinstance(payload.get("input"), list):
        return sum(max(1, len(str(text).split())) for text in payload["input"])
    return 1


def _claimed_wallet(authorization: str | None) -> str | None:
    """The address a session token names, unverified: only to count a refusal made before the token is
    checked (a provider-wide 503) against the wallet that sent it."""
    encoded = (authorization or "").removeprefix("Bearer app-sk-")
    try:
        raw = base64.b64decode(encoded, validate=True).decode().partition("|")[0]
        address = json.loads(raw)["address"]
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return address.lower() if isinstance(address, str) else None


# The key a `sign_wrong_key` provider signs with: not its registered TEE signer.
_IMPOSTOR = Wallet("0x" + hashlib.sha256(b"zg-router devnet impostor signer").hexdigest())
# The start of generated text, in a whole reply ("content": ") and in a stream chunk ("content":").
_CONTENT = re.compile(rb'("content": ?")')


def _altered(parts: list[bytes]) -> list[bytes]:
    """The reply with its first generated text changed (an `alter_after_signing` provider's lie)."""
    for index, part in enumerate(parts):
        if _CONTENT.search(part):
            changed = _CONTENT.sub(rb"\1[altered] ", part, count=1)
            return [*parts[:index], changed, *parts[index + 1 :]]
    return [*parts[:-1], parts[-1] + b"\n"]
