"""What the replica acceptance tests share: a Redis of their own, ``zg-router serve`` processes on one
wallet sharing it, closed-loop clients over HTTP, and the counts read back from Redis and the replicas.

Everything here is a real part: redis-server on a loopback port (with a password, which no replica may
ever show), the ``zg-router`` console script as a user runs it, aiohttp clients against each gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio

from router.devnet import USER_KEY_INDEX, Devnet, dev_private_key
from tests.conftest import watch_text

REDIS_SERVER = "/usr/bin/redis-server"
ZG_ROUTER = Path(sys.executable).with_name("zg-router")
API_KEY = "sk-replicas-test-0123456789abcdef"
ADMIN_KEY = "zg-admin-replicas-0123456789abcdef"
PREFIX = "zg-router"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
# How long a probe of a replica (``/readyz``, the admin API) may take: far more than a healthy answer
# needs, so that only a replica stuck on something (a stopped Redis) runs out of it.
PROBE_TIMEOUT = 3.0
# How long after its deadline a request may end (the replica's scheduling, not its deadline).
DEADLINE_SLACK = 1.0
POLL_INTERVAL = 0.1
# Every replica of a test reads this config; a test's own tables are merged over it.
BASE_SECTIONS: dict[str, dict[str, Any]] = {
    "transport": {"allow_private_targets": True},
    "discovery": {"event_poll_interval": 1.0, "probe_interval": 1.0},
    "money": {"balance_interval": 5.0, "watch_interval": 1.0},
    "gateway": {"shutdown_timeout": 1.0},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence, a fresh password; ``pause()`` and
    ``resume()`` SIGSTOP and SIGCONT it (a Redis that stops answering with its connections open)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.process: asyncio.subprocess.Process | None = None
        self.client = redis.asyncio.Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=True, socket_timeout=5
        )
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> RedisServer:
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--requirepass", self.password, "--dir", str(self._directory)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(redis.ConnectionError):
                    if await self.client.ping():
                        return self
                await asyncio.sleep(POLL_INTERVAL)

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
            await self.process.wait()
        await self.client.aclose()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    async def seconds(self) -> float:
        """Redis' own clock (``TIME``): what lease expiries are scored in."""
        whole, micro = await self.client.time()
        return int(whole) + int(micro) / 1e6

    async def live_leases(self) -> dict[str, int]:
        """Each lane's unexpired concurrency leases (``ZCOUNT P:lane:*:leases (now +inf``), by lane key;
        lanes without a live lease left out."""
        now = await self.seconds()
        counts = {}
        async for key in self.client.scan_iter(match=f"{PREFIX}:lane:*:leases", count=1000):
            live = int(await self.client.zcount(key, f"({now}", "+inf"))
            if live:
                counts[key.removeprefix(f"{PREFIX}:lane:").removesuffix(":leases")] = live
        return counts

    async def live_lease_ids(self, lane: str) -> list[str]:
        """The ids of ``lane``'s unexpired leases. A lease id names the replica that holds it (its
        host, pid and a suffix, then a counter: ``SharedStore.new_id``)."""
        now = await self.seconds()
        found = await self.client.zrangebyscore(f"{PREFIX}:lane:{lane}:leases", f"({now}", "+inf")
        return [str(lease) for lease in found]


def held_by(ids: Sequence[str], replica: Replica) -> int:
    """How many of the lease ``ids`` ``replica`` holds (its pid is in each of its ids)."""
    return sum(1 for lease in ids if f"-{replica.process.pid}-" in lease)


def lane_key(wallet: str, provider: str) -> str:
    """A lane's key, as ``router.pool.providers.Lane.key`` spells it."""
    return f"{wallet.lower()}/{provider.lower()}"


def toml_text(sections: Mapping[str, Any]) -> str:
    """A TOML document of top-level values and one level of tables (all this config needs)."""
    top = [f"{key} = {json.dumps(value)}" for key, value in sections.items() if not isinstance(value, dict)]
    tables = []
    for name, table in sections.items():
        if isinstance(table, dict):
            rows = "\n".join(f"{key} = {_toml_value(value)}" for key, value in table.items())
            tables.append(f"[{name}]\n{rows}")
    return "\n\n".join(["\n".join(top), *tables]) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def merged(base: Mapping[str, dict[str, Any]], changes: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    tables = {name: dict(table) for name, table in base.items()}
    for name, table in changes.items():
        tables.setdefault(name, {}).update(table)
    return tables


@dataclass(eq=False)
class Replica:
    """One ``zg-router serve`` process: its stderr JSON lines as they come (read all along, so that a
    full pipe never stalls it), and its gateway's URL once it listens."""

    index: int
    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    url: str = ""
    metrics_url: str = ""
    killed_at: float | None = None
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.killed_at is None and self.process.returncode is None

    @property
    def api(self) -> str:
        return self.url + "/v1"

    async def read_logs(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while line := await stream.readline():
            self.raw += line
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entry["_at"] = asyncio.get_running_loop().time()
                    self.lines.append(entry)
                    if entry.get("event") == "gateway listening":
                        self.url = str(entry["url"]).removesuffix("/v1")
                        self.metrics_url = str(entry.get("metrics_url") or "")
                        self.listening.set()

    def kill(self) -> None:
        """``kill -9``: no cleanup of any kind runs in the replica."""
        self.killed_at = asyncio.get_running_loop().time()
        self.process.kill()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def log_text(self) -> str:
        return self.raw.decode(errors="replace")


async def start_replica(index: int, config: Path, key_file: Path, redis_url: str | None) -> Replica:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ZG_ROUTER_")},
        "ZG_ROUTER_PRIVATE_KEY_FILE": str(key_file),
        "ZG_ROUTER_API_KEYS": API_KEY,
        "ZG_ROUTER_ADMIN_KEYS": ADMIN_KEY,
        "ZG_ROUTER_PORT": "0",
        "ZG_ROUTER_METRICS_PORT": "0",
    }
    if redis_url is not None:
        env["ZG_ROUTER_REDIS_URL"] = redis_url
    process = await asyncio.create_subprocess_exec(
        str(ZG_ROUTER),
        *("serve", "--config", str(config), "--log-format", "json"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    replica = Replica(index, process)
    replica.reader = asyncio.create_task(replica.read_logs())
    return replica


async def wait_listening(replica: Replica) -> None:
    assert replica.reader is not None
    waiter = asyncio.create_task(replica.listening.wait())
    try:
        async with asyncio.timeout(START_TIMEOUT):
            await asyncio.wait({waiter, replica.reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    assert replica.listening.is_set(), (
        f"replica {replica.index} exited ({replica.process.returncode}) before listening:\n"
        + replica.log_text()[-3000:]
    )


async def stop_replica(replica: Replica) -> None:
    """SIGTERM, then SIGKILL if it has not gone within ``STOP_TIMEOUT``; its log read to the end."""
    process = replica.process
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if replica.reader is not None:
        async with asyncio.timeout(STOP_TIMEOUT):
            await replica.reader


@contextlib.asynccontextmanager
async def running_replicas(
    devnet: Devnet,
    directory: Path,
    sections: Mapping[str, dict[str, Any]],
    *,
    redis_server: RedisServer | None,
    count: int,
) -> AsyncIterator[list[Replica]]:
    """``count`` replicas paying with the devnet's first user, all with ``sections`` over the base
    config, sharing ``redis_server``; up once every gateway listens (and, with Redis, every replica says
    it counts in Redis). Stopped, then killed, on the way out; their logs are checked for secrets (the
    wallet key, the API and admin keys, the Redis password)."""
    key_file = directory / "wallet.key"
    key_file.write_text(dev_private_key(USER_KEY_INDEX) + "\n")
    config = directory / "zg-router.toml"
    document = {"network": "devnet", "rpc_urls": [devnet.rpc_url], **merged(BASE_SECTIONS, sections)}
    config.write_text(toml_text(document))
    url = redis_server.url if redis_server is not None else None
    replicas: list[Replica] = []
    try:
        for index in range(count):
            replicas.append(await start_replica(index, config, key_file, url))
        await asyncio.gather(*(wait_listening(r) for r in replicas))
        if redis_server is not None:
            async with aiohttp.ClientSession() as http:
                await wait_for_mode(http, replicas, "shared", within=30.0)
        yield replicas
    finally:
        await asyncio.gather(*(stop_replica(r) for r in replicas), return_exceptions=True)
        for replica in replicas:
            text = replica.log_text()
            watch_text(text, f"replica {replica.index}'s log")
            if redis_server is not None:
                assert redis_server.password not in text, f"replica {replica.index} logged the Redis password"


# -- probes ----------------------------------------------------------------------------------------------


async def until(condition: Callable[[], bool | Awaitable[bool]], *, within: float, what: str) -> float:
    """Checks ``condition`` every ``POLL_INTERVAL`` until it holds; the seconds that took. Past
    ``within``: an AssertionError saying ``what`` did not happen."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(within):
            while True:
                held = condition()
                if not isinstance(held, bool):
                    held = await held
                if held:
                    return loop.time() - started
                await asyncio.sleep(POLL_INTERVAL)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


async def readyz(http: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    """The replica's ``/readyz`` body (any status), within ``PROBE_TIMEOUT``: a replica that cannot
    answer that fast is stuck."""
    async with asyncio.timeout(PROBE_TIMEOUT), http.get(replica.url + "/readyz") as response:
        return dict(await response.json(content_type=None))


def shared_view(body: Mapping[str, Any]) -> dict[str, Any]:
    shared = body.get("shared")
    assert isinstance(shared, dict), f"/readyz has no shared view: {body}"
    return shared


async def wait_for_mode(
    http: aiohttp.ClientSession, replicas: Sequence[Replica], mode: str, *, within: float
) -> float:
    """Polls every replica's ``/readyz`` until each says ``shared.mode == mode``; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    seen: dict[int, Any] = {}
    try:
        async with asyncio.timeout(within):
            while True:
                for replica in replicas:
                    seen[replica.index] = (await readyz(http, replica)).get("shared")
                if all(isinstance(s, dict) and s.get("mode") == mode for s in seen.values()):
                    return loop.time() - started
                await asyncio.sleep(POLL_INTERVAL)
    except TimeoutError:
        raise AssertionError(f"not every replica in {mode} mode within {within} s: {seen}") from None


async def leaders(http: aiohttp.ClientSession, replicas: Sequence[Replica]) -> list[Replica]:
    """The replicas whose ``/readyz`` says they lead."""
    found = []
    for replica in replicas:
        if shared_view(await readyz(http, replica)).get("leader") is True:
            found.append(replica)
    return found


async def wait_for_one_leader(
    http: aiohttp.ClientSession, replicas: Sequence[Replica], *, within: float
) -> Replica:
    """Polls ``/readyz`` until exactly one of ``replicas`` says it leads; that one."""
    seen: list[Replica] = []

    async def one() -> bool:
        nonlocal seen
        seen = await leaders(http, replicas)
        return len(seen) == 1

    names = [r.index for r in replicas]
    await until(one, within=within, what=f"exactly one leader among replicas {names}")
    return seen[0]


async def metric(http: aiohttp.ClientSession, replica: Replica, sample: str) -> float | None:
    """The value of one sample of the replica's ``/metrics`` (``name`` or ``name{labels}`` exactly as
    Prometheus text spells it), or None when it is not there."""
    async with asyncio.timeout(PROBE_TIMEOUT), http.get(replica.metrics_url) as response:
        text = await response.text()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


async def admin_balance(http: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        asyncio.timeout(PROBE_TIMEOUT),
        http.get(replica.url + "/admin/balance", headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        return dict(await response.json())


# -- load ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request through a replica ended: ``kind`` is ``ok``, ``saturated`` (our 429),
    ``unavailable`` (our 503), ``hung`` (it outlived the client's patience), ``error`` (any other
    status, or the connection failed)."""

    kind: str
    replica: int
    started: float
    ended: float
    status: int | None = None
    retry_after: str | None = None
    detail: str = ""

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


def chat_body(model: str, index: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"request {index} to {model}"}],
        "max_tokens": 8,
        **extra,
    }


async def post_chat(
    http: aiohttp.ClientSession, replica: Replica, body: Mapping[str, Any], *, patience: float
) -> Outcome:
    """One chat completion through ``replica``'s gateway, given up (``hung``) after ``patience``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        async with (
            asyncio.timeout(patience),
            http.post(replica.api + "/chat/completions", json=body, headers=headers) as response,
        ):
            text = await response.text()
    except TimeoutError:
        return Outcome("hung", replica.index, started, loop.time(), detail=f"no answer in {patience} s")
    except aiohttp.ClientError as exc:
        return Outcome("error", replica.index, started, loop.time(), detail=f"{type(exc).__name__}: {exc}")
    status = response.status
    kind = {200: "ok", 429: "saturated", 503: "unavailable"}.get(status, "error")
    detail = "" if status == 200 else text[:300]
    return Outcome(
        kind, replica.index, started, loop.time(), status, response.headers.get("Retry-After"), detail
    )


Send = Callable[[Replica, int], Awaitable[Outcome]]


async def closed_loop(
    replicas: Sequence[Replica], per_replica: int, send: Send, stop: asyncio.Event, *, drain: float
) -> list[Outcome]:
    """``per_replica`` clients on each replica, each sending (``send(replica, sequence number)``),
    waiting for the answer and sending again until ``stop`` is set, or its replica is killed or fails
    it (a client of a dead replica stops at its first failure). Every outcome, once the last request
    ended; ``drain`` bounds how long after ``stop`` that may be."""
    outcomes: list[Outcome] = []
    counter = iter(range(10**9))

    async def client(replica: Replica) -> None:
        while not stop.is_set() and replica.alive:
            outcome = await send(replica, next(counter))
            outcomes.append(outcome)
            if outcome.kind == "error" and not replica.alive:
                return

    async def bounded() -> None:
        await stop.wait()
        await asyncio.sleep(drain)
        raise TimeoutError(f"requests still running {drain} s after the load stopped")

    async with asyncio.TaskGroup() as group:
        guard = group.create_task(bounded())
        clients = [group.create_task(client(r)) for r in replicas for _ in range(per_replica)]
        await asyncio.gather(*clients)
        guard.cancel()
    return outcomes


def tally(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    return counts


def assert_served_or_ours(outcomes: Sequence[Outcome], deadline: float, *, allow: Sequence[str]) -> None:
    """Every request ended within its deadline, in a reply or in one of ``allow`` (our own refusals,
    each with a usable Retry-After)."""
    bad = [o for o in outcomes if o.kind != "ok" and o.kind not in allow]
    assert not bad, f"{len(bad)} request(s) ended otherwise ({tally(bad)}), e.g. {bad[:3]}"
    late = [o for o in outcomes if o.elapsed > deadline + DEADLINE_SLACK]
    assert not late, f"{len(late)} request(s) outlived their {deadline} s deadline, e.g. {late[:3]}"
    unhinted = [o for o in outcomes if o.kind != "ok" and not (o.retry_after or "").isdigit()]
    assert not unhinted, f"{len(unhinted)} refusal(s) without a Retry-After, e.g. {unhinted[:3]}"


def most_in_any_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` that fall in any half-open interval of ``window`` seconds."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        most = max(most, end - start + 1)
    return most
