"""Shared money: one wallet's book as every replica of a deployment sees it, kept in step through Redis.

Each ``sync_interval`` every replica runs one script for each wallet (one round trip) that

- adds the request costs it booked since the last round to ``P:spent:{wallet}`` (every replica), and the
  settlements its watcher applied to ``P:settled:{wallet}`` with the watcher's block (the leader only:
  both under its fencing token, so a deposed leader adds nothing);
- writes its own holds, per provider, to ``P:reserved:{wallet}:{replica}``, which expires with the
  replica (a crashed replica's holds vanish after ``replica_ttl``);
- publishes the leader's book (chain view, unsettled fees, funding state) to ``P:book:{wallet}``;
- and reads back the book, both totals and every other replica's holds.

From those every replica's book has, per sub-account, ``our_unsettled = spent - settled`` over all
replicas (plus its own costs not sent yet) and ``reserved_elsewhere`` (the others' holds), so that
``covers()`` stays a sync check on local numbers. Our costs are estimates (a cut-short request books
its whole reserve), so when the leader reads a provider's own unsettled figure while nothing was in
flight there on any replica, and no spend reached Redis meanwhile, the script sets ``settled`` so that
``spent - settled`` is that figure: the shared estimate never drifts for good. A follower takes the
leader's chain view, which is stamped with its chain position: an older one never replaces a newer one.

Redis down: the round is skipped (the store bounds it); what was not sent is the difference between the
local running totals and what was sent, so the next round that reaches Redis sends it all.

Totals grow past what Redis's 64-bit ``HINCRBY`` holds in neuron, so each is kept in two fields:
``hi:{provider}`` (units of ``_LOW`` neuron) and ``lo:{provider}`` (the rest, carried over by the script).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from router.pool.accounting import Accounts, FundingState

if TYPE_CHECKING:
    from router.money.watcher import SettlementWatcher
    from router.shared.leader import Leadership
    from router.shared.options import SharedOptions
    from router.shared.store import SharedStore

_LOW = 10**12
_SYNC = """
local function add(key, field, hi, lo)
  local low = redis.call('HINCRBY', key, 'lo:' .. field, lo)
  if low >= 1000000000000 then
    redis.call('HINCRBY', key, 'lo:' .. field, -1000000000000)
    redis.call('HINCRBY', key, 'hi:' .. field, 1)
  end
  redis.call('HINCRBY', key, 'hi:' .. field, hi)
end
local changes = cjson.decode(ARGV[5])
local leading = ARGV[4] ~= '' and redis.call('GET', KEYS[6]) == ARGV[4]
if leading then
  -- A provider's own figure, read while nothing was in flight: settled becomes spent - that figure,
  -- unless spending moved since the figure was asked for.
  for _, r in ipairs(changes.rebase) do
    if (redis.call('HGET', KEYS[2], 'hi:' .. r[1]) or '0') == r[2]
        and (redis.call('HGET', KEYS[2], 'lo:' .. r[1]) or '0') == r[3] then
      redis.call('HSET', KEYS[3], 'hi:' .. r[1], r[4], 'lo:' .. r[1], r[5])
    end
  end
end
for _, c in ipairs(changes.spent) do add(KEYS[2], c[1], c[2], c[3]) end
if leading then
  for _, c in ipairs(changes.settled) do add(KEYS[3], c[1], c[2], c[3]) end
  if ARGV[7] ~= '' and tonumber(ARGV[7]) > tonumber(redis.call('HGET', KEYS[3], 'block') or '-1') then
    redis.call('HSET', KEYS[3], 'block', ARGV[7])
  end
  if ARGV[6] ~= '' then redis.call('SET', KEYS[1], ARGV[6]) end
end
redis.call('DEL', KEYS[4])
for _, c in ipairs(changes.reserved) do redis.call('HSET', KEYS[4], c[1], c[2]) end
if #changes.reserved > 0 then redis.call('PEXPIRE', KEYS[4], ARGV[3]) end
if ARGV[8] ~= '' then redis.call('PUBLISH', KEYS[7], ARGV[8]) end
local others = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  if id ~= ARGV[1] then
    local held = redis.call('HGETALL', ARGV[2] .. id)
    if #held > 0 then table.insert(others, held) end
  end
end
return {redis.call('GET', KEYS[1]) or '', redis.call('HGETALL', KEYS[2]),
        redis.call('HGETALL', KEYS[3]), others, leading and 1 or 0}
"""


class SharedBook:
    """Keeps ``accounts`` (the book of ``wallet``) in step with the other replicas'. ``run()`` in the
    background; ``load()`` once at open, on a follower."""

    def __init__(
        self,
        store: SharedStore,
        options: SharedOptions,
        accounts: Accounts,
        *,
        wallet: str,
        leadership: Leadership,
        watcher: SettlementWatcher,
    ) -> None:
        from router.shared.store import SharedUnavailable

        self._unavailable = SharedUnavailable
        self._store = store
        self._accounts = accounts
        self._wallet = wallet.lower()
        self._leadership = leadership
        self._watcher = watcher
        self._interval = options.sync_interval
        self._reserved_ttl_ms = max(1, int(options.replica_ttl * 1000))
        self._keys = [
            store.key("book", self._wallet),
            store.key("spent", self._wallet),
            store.key("settled", self._wallet),
            store.key("reserved", self._wallet, store.replica),
            store.key("replicas"),
            store.key("leader"),
            store.key("wake", "funder"),
        ]
        self._reserved_prefix = store.key("reserved", self._wallet, "")
        self._script = store.script(_SYNC)
        # What of each provider's running totals (``SubAccount.spent``/``settled``) is in Redis already.
        self._sent_spent: dict[str, int] = {}
        self._sent_settled: dict[str, int] = {}
        # Each provider's spent total over all replicas as of the last round, and the providers' own
        # figures taken at quiet moments (``witness``), for the next round to set the count by.
        self._spent_seen: dict[str, int] = {}
        self._quiet_fees: dict[str, tuple[int, int]] = {}
        self._wake_leader = False
        self._asked = asyncio.Event()
        # One round at a time: two in flight would both send the same growth of the totals.
        self._round = asyncio.Lock()
        # Leading and the watcher restarted where the shared count stops (``elected``): only then do
        # this replica's settlements and watcher block go to Redis.
        self._counting = False
        self.watcher_block: int | None = None  # the leader's, from its last published book

    @property
    def leading(self) -> bool:
        return self._leadership.is_leader

    def wake_leader(self) -> None:
        """A follower's funder wake-up: published for the leader with the next round (``P:wake:funder``)."""
        if not self._leadership.is_leader:
            self._wake_leader = True
            self._asked.set()

    def ask(self) -> None:
        """Run a round soon, without waiting for the interval."""
        self._asked.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._asked.wait()
            self._asked.clear()
            # Redis trouble is the store's to report; the next round sends what this one could not.
            with contextlib.suppress(self._unavailable):
                await self.sync()

    async def load(self) -> bool:
        """One round at open: whether it found a leader's book (then this replica needs no chain read)."""
        try:
            return await self.sync()
        except self._unavailable:
            return False

    def witness(self, provider: str) -> Callable[[int], None] | None:
        """For the leader's fee read of ``provider`` (``BalanceSync.witness``): when all of this
        replica's spend there is in Redis, what takes the provider's figure, if nothing was in flight,
        as the truth for every replica (the estimate drifts: a cut-short request books its reserve)."""
        key = provider.lower()
        account = self._accounts.get(key)
        if not self._counting or account is None or account.spent != self._sent_spent.get(key, 0):
            return None
        seen = self._spent_seen.get(key, 0)

        def quiet(unsettled: int) -> None:
            self._quiet_fees[key] = (seen, unsettled)

        return quiet

    async def elected(self) -> int | None:
        """This replica just became the leader: the block up to which ``P:settled`` counts settlements
        (its watcher goes on from the next one), or None when no leader counted any. Settlements its own
        watcher applied in an earlier term and never sent are forgotten: the watcher reads them again."""
        async with self._round:
            self._sent_settled = {a.provider.lower(): a.settled for a in self._accounts}
            try:
                raw = await self._store.call(lambda: self._store.redis.hget(self._keys[2], "block"))
            except self._unavailable:
                raw = None
            # The caller restarts its watcher before anything else runs: no round sees the old cursor.
            self._counting = True
            return int(raw) if raw is not None else None

    async def sync(self) -> bool:
        """One round (see the module doc); raises ``SharedUnavailable`` when Redis does not answer in
        time. Whether Redis held a leader's book."""
        async with self._round:
            return await self._sync()

    async def _sync(self) -> bool:
        accounts = self._accounts
        spent = {a.provider.lower(): a.spent for a in accounts}
        settled = {a.provider.lower(): a.settled for a in accounts}
        lease = self._leadership.lease
        self._counting = self._counting and lease is not None
        counting = self._counting
        quiet_fees, self._quiet_fees = self._quiet_fees, {}
        changes = {
            "rebase": _rebases(quiet_fees, spent, settled, self._sent_spent, self._sent_settled)
            if counting
            else [],
            "spent": _deltas(spent, self._sent_spent),
            "settled": _deltas(settled, self._sent_settled) if counting else [],
            "reserved": [[a.provider.lower(), str(a.reserved)] for a in accounts if a.reserved > 0],
        }
        wake, self._wake_leader = self._wake_leader, False
        args: list[str | int] = [
            self._store.replica,
            self._reserved_prefix,
            self._reserved_ttl_ms,
            lease or "",
            json.dumps(changes),
            json.dumps(self.snapshot()) if lease else "",
            str(self._watcher.cursor - 1) if counting else "",
            self._wallet if wake else "",
        ]
        try:
            book, spent_raw, settled_raw, others, leading = await self._store.call(
                lambda: self._script(keys=self._keys, args=args)
            )
        except self._unavailable:
            self._wake_leader = self._wake_leader or wake
            raise
        self._sent_spent.update(spent)
        if leading and counting:
            self._sent_settled.update(settled)
        elif book and not self._leadership.is_leader:
            self._apply(json.loads(book))
        spent_totals = _totals(_pairs(spent_raw))
        self._spent_seen = spent_totals
        self._take_totals(spent_totals, _totals(_pairs(settled_raw)), others)
        return bool(book)

    def snapshot(self) -> dict[str, Any]:
        """The leader's book of the wallet, as it publishes it (amounts as decimal strings)."""
        accounts = self._accounts
        return {
            "ledger": {
                "available": str(accounts.ledger_available),
                "total": str(accounts.ledger_total),
                "block": accounts.ledger_block,
                "providers": sorted(accounts.funded_providers),
            },
            "watcher_block": self._watcher.cursor - 1,
            "accounts": [
                {
                    "provider": a.provider,
                    "exists": a.exists,
                    "acknowledged": a.acknowledged,
                    "balance": str(a.balance),
                    "pending_refund": str(a.pending_refund),
                    "as_of": list(a.as_of),
                    "provider_unsettled": str(a.provider_unsettled),
                    "funding": a.funding.value,
                    "funding_detail": a.funding_detail,
                }
                for a in accounts
            ],
        }

    def _apply(self, book: dict[str, Any]) -> None:
        """A follower takes the leader's book: chain fields where newer, fees and funding state as is."""
        accounts = self._accounts
        ledger = book["ledger"]
        accounts.observe_ledger(
            block=int(ledger["block"]),
            available=int(ledger["available"]),
            total=int(ledger["total"]),
            providers=frozenset(ledger["providers"]),
        )
        for sub in book["accounts"]:
            block, index = sub["as_of"]
            accounts.observe(
                sub["provider"],
                position=(int(block), int(index)),
                exists=bool(sub["exists"]),
                balance=int(sub["balance"]),
                pending_refund=int(sub["pending_refund"]),
                acknowledged=bool(sub["acknowledged"]),
            )
            account = accounts.of(sub["provider"])
            account.provider_unsettled = int(sub["provider_unsettled"])
            account.funding = FundingState(sub["funding"])
            account.funding_detail = str(sub["funding_detail"])
        self.watcher_block = int(book["watcher_block"])

    def _take_totals(self, spent: dict[str, int], settled: dict[str, int], others: list[Any]) -> None:
        elsewhere: dict[str, int] = {}
        for held in others:
            for provider, amount in _pairs(held).items():
                elsewhere[provider] = elsewhere.get(provider, 0) + int(amount)
        for provider in spent.keys() | elsewhere.keys() | {a.provider.lower() for a in self._accounts}:
            account = self._accounts.of(provider)
            # Costs booked while the round was in flight are not in Redis's total yet, but are owed.
            unsent = account.spent - self._sent_spent.get(provider, 0)
            if self._counting:
                # Settlements our watcher applied meanwhile are no longer owed either.
                unsent -= account.settled - self._sent_settled.get(provider, 0)
            owed = max(0, spent.get(provider, 0) - settled.get(provider, 0))
            account.our_unsettled = max(0, owed + unsent)
            account.reserved_elsewhere = elsewhere.get(provider, 0)


def _deltas(totals: dict[str, int], sent: dict[str, int]) -> list[list[str]]:
    """Each provider's growth since ``sent``, as [provider, hi, lo] for the script's ``add``."""
    changes = []
    for provider, total in totals.items():
        delta = total - sent.get(provider, 0)
        if delta > 0:
            hi, lo = divmod(delta, _LOW)
            changes.append([provider, str(hi), str(lo)])
    return changes


def _rebases(
    quiet_fees: dict[str, tuple[int, int]],
    spent: dict[str, int],
    settled: dict[str, int],
    sent_spent: dict[str, int],
    sent_settled: dict[str, int],
) -> list[list[str]]:
    """[provider, spent hi, lo as seen, settled hi, lo to set] for each quiet figure still good: none
    where this replica has spend or settlements there that Redis has not counted yet."""
    changes = []
    for provider, (seen, unsettled) in quiet_fees.items():
        if spent.get(provider, 0) != sent_spent.get(provider, 0):
            continue
        if settled.get(provider, 0) != sent_settled.get(provider, 0):
            continue
        seen_hi, seen_lo = divmod(seen, _LOW)
        set_hi, set_lo = divmod(seen - unsettled, _LOW)
        changes.append([provider, str(seen_hi), str(seen_lo), str(set_hi), str(set_lo)])
    return changes


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A ``HGETALL`` reply (a flat list, as bytes or str) as a dict of str."""
    text = [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    return dict(zip(text[::2], text[1::2], strict=True))


def _totals(fields: dict[str, str]) -> dict[str, int]:
    """Each provider's total from its ``hi:``/``lo:`` fields."""
    totals: dict[str, int] = {}
    for field, value in fields.items():
        part, _, provider = field.partition(":")
        if part in ("hi", "lo") and provider:
            unit = _LOW if part == "hi" else 1
            totals[provider] = totals.get(provider, 0) + int(value) * unit
    return totals
