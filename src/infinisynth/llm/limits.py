"""A role's limits for the whole deployment: concurrency, requests and tokens per minute, AIMD.

Every process that calls a role's endpoint (each mapped task, each Celery worker) shares one
budget, kept in a store:

- ``INFINISYNTH_LIMITS_URL`` or the role connection's ``extra.limits_url``: ``redis://host:6379/1``
  (the Celery stack's Redis) for a deployment over several machines; ``sqlite:///path/file``;
- by default a SQLite file on this machine (``$XDG_CACHE_HOME`` or ``~/.cache``
  ``/infinisynth/limits.sqlite``), shared by every process of the user (LocalExecutor, ``airflow
  dags test``, several tasks at once). WAL mode, one short ``BEGIN IMMEDIATE`` transaction per
  acquire or release, run on a thread of its own so the event loop never waits on a file lock.

The budget is keyed by the endpoint, the model and a hash of the API key
(:func:`role_key`): two roles on the same endpoint, model and key share it.

- **Requests and tokens per minute** are ``limits`` moving windows (``limits.aio``; Redis through
  its own storage, SQLite through :class:`SQLiteStorage`, registered with its storage registry as
  ``async+sqlite``). The window is the shortest divisor of a minute whose share of the budget is a
  whole number (a per-second equivalent where it can be), so no 60 s span ever holds more than the
  per-minute budget and requests are spread instead of sent in one burst. Requests are counted per
  HTTP attempt (the OpenAI client's own retries included), tokens per call (the estimate:
  characters / 4 + ``max_tokens``).
- **Concurrency** is a shared semaphore of leases (a Redis sorted set of expiry times, a SQLite
  table): each HTTP attempt holds one; a heartbeat renews them, so a slot held by a killed
  process expires after :data:`LEASE_TTL` seconds.
- **Retry-After** of a 429 or 503 is a hold-off in the store: no request of the role is sent,
  from any process, before its deadline.
- **Adaptive concurrency** (:class:`Aimd`, per process): a 429, a 503 or a latency well above its
  recent baseline (once per jump: the new level becomes the baseline) halves the in-flight limit
  (floor ``min_concurrency``); answers to requests sent before a change do not count; each window of
  ``limit`` successful answers adds one, up to ``max_concurrency``. Near the level of the last
  overload it probes one step higher only every :data:`PROBE_WINDOWS` windows, and a failed probe
  steps back to the last level that held instead of halving again.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import math
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlparse

from limits import RateLimitItemPerSecond
from limits.aio.storage import MovingWindowSupport, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from infinisynth.llm.roles import RoleConfig

log = logging.getLogger(__name__)

LIMITS_URL_ENV = "INFINISYNTH_LIMITS_URL"
LEASE_TTL = 30.0  # seconds a concurrency slot outlives a process that stops renewing it
MAX_HOLD_OFF = 300.0  # the longest Retry-After honoured for the whole role
POLL_MIN, POLL_MAX = 0.005, 0.05  # seconds between tries for a full semaphore (other processes)
HANDOFF_AGE = 1.0  # seconds a slot may pass from call to call in one process before going back
# AIMD
BACKOFF = 0.5
PROBE_WINDOWS = 30  # clean windows at the last safe level before one step above it
LATENCY_FACTOR = 3.0  # recent latency this far above the baseline is overload
LATENCY_SAMPLES = 50  # answers before the latency baseline counts
OVERLOAD_STATUSES = frozenset({429, 503})
# The windows a per-minute budget may be spread over (divisors of 60 s).
WINDOWS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)
TOKEN_UNITS = 1000  # at most this many units per token window (Redis keeps one entry per unit)

T = TypeVar("T")


def default_limits_url() -> str:
    """The machine-local store: a SQLite file in the user's cache folder (or the temp folder)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infinisynth"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if not os.access(base, os.W_OK):
            raise PermissionError(base)
    except OSError:
        base = Path(tempfile.gettempdir()) / f"infinisynth-{os.getuid()}"
        base.mkdir(parents=True, exist_ok=True)
    return f"sqlite://{(base / 'limits.sqlite').resolve()}"


def limits_url(configured: str | None = None) -> str:
    """The role's store: its connection's ``limits_url``, else ``INFINISYNTH_LIMITS_URL``, else local."""
    return configured or os.environ.get(LIMITS_URL_ENV) or default_limits_url()


def role_key(config: RoleConfig) -> str:
    """What a budget is shared by: endpoint, model and (a hash of) the API key."""
    secret = hashlib.sha256(config.api_key.get_secret_value().encode()).hexdigest()[:12]
    return f"{config.base_url}|{config.model}|{secret}"


def window_for(per_minute: float, smallest: float = 1) -> tuple[int, int]:
    """``(seconds, amount)``: the shortest window (a divisor of a minute) whose share of the budget
    is at least ``smallest`` and a whole number (or within 2% of it); never more than the budget."""
    if per_minute < 1:
        return max(1, math.ceil(60 / per_minute)), 1
    for seconds in WINDOWS:
        exact = per_minute * seconds / 60
        amount = math.floor(exact + 1e-9)
        if amount >= max(1, smallest) and amount >= 0.98 * exact:
            return seconds, amount
    return 60, math.floor(per_minute)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, min(float(value) * scale, MAX_HOLD_OFF))
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, min(email.utils.mktime_tz(parsed) - time.time(), MAX_HOLD_OFF))
    return None


# -- stores ------------------------------------------------------------------------------------


class LeaseStore(Protocol):
    """The cross-process part that ``limits`` lacks: a semaphore of leases and a hold-off."""

    async def acquire_lease(self, key: str, lease: str, limit: int, ttl: float) -> float:
        """0 if the lease was taken; > 0: seconds until the hold-off ends; < 0: all slots taken."""
        ...

    async def release_lease(self, key: str, lease: str) -> None: ...

    async def renew_leases(self, key: str, leases: list[str], ttl: float) -> None: ...

    async def hold_off(self, key: str, seconds: float) -> None: ...

    async def aclose(self) -> None: ...


class SQLiteStorage(Storage, MovingWindowSupport):
    """A ``limits`` storage (moving and fixed windows) in a SQLite file, plus the lease semaphore.

    ``async+sqlite:///absolute/path``. Every call is one short transaction on the store's own
    thread; ``BEGIN IMMEDIATE`` serializes writers across processes (WAL, ``busy_timeout``).
    """

    STORAGE_SCHEME = ["async+sqlite"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: float | str | bool) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self.path = urlparse(uri).path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="limits-sqlite")
        self._db: sqlite3.Connection | None = None

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return sqlite3.Error

    # one transaction on the store's thread

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS entry (key TEXT NOT NULL, ts REAL NOT NULL, amount INTEGER NOT NULL);
                CREATE INDEX IF NOT EXISTS entry_key_ts ON entry (key, ts);
                CREATE TABLE IF NOT EXISTS counter (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS lease (id TEXT PRIMARY KEY, key TEXT NOT NULL, expires REAL NOT NULL);
                CREATE INDEX IF NOT EXISTS lease_key ON lease (key, expires);
                CREATE TABLE IF NOT EXISTS holdoff (key TEXT PRIMARY KEY, until REAL NOT NULL);
                """
            )
            self._db = db
            # Forget what no window can still need (other roles' old entries included).
            self._transaction(lambda db, now: db.execute("DELETE FROM entry WHERE ts < ?", (now - 3600,)))
        return self._db

    def _transaction(self, body: Callable[[sqlite3.Connection, float], T]) -> T:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db, time.time())
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def _run(self, body: Callable[[sqlite3.Connection, float], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, body)

    # limits: moving window

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        def body(db: sqlite3.Connection, now: float) -> bool:
            if amount > limit:
                return False
            db.execute("DELETE FROM entry WHERE key = ? AND ts <= ?", (key, now - expiry))
            (used,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM entry WHERE key = ?", (key,)).fetchone()
            if used + amount > limit:
                return False
            db.execute("INSERT INTO entry VALUES (?, ?, ?)", (key, now, amount))
            return True

        return await self._run(body)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        def body(db: sqlite3.Connection, now: float) -> tuple[float, int]:
            oldest, used = db.execute(
                "SELECT MIN(ts), COALESCE(SUM(amount), 0) FROM entry WHERE key = ? AND ts > ?", (key, now - expiry)
            ).fetchone()
            return (oldest if oldest is not None else now), int(used)

        return await self._run(body)

    # limits: fixed window and the rest of the storage contract

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        def body(db: sqlite3.Connection, now: float) -> int:
            db.execute("DELETE FROM counter WHERE key = ? AND expires <= ?", (key, now))
            db.execute(
                "INSERT INTO counter VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (key, amount, now + expiry),
            )
            return int(db.execute("SELECT value FROM counter WHERE key = ?", (key,)).fetchone()[0])

        return await self._run(body)

    async def get(self, key: str) -> int:
        row = await self._run(lambda db, now: db.execute("SELECT value FROM counter WHERE key = ? AND expires > ?", (key, now)).fetchone())
        return int(row[0]) if row else 0

    async def get_expiry(self, key: str) -> float:
        row = await self._run(lambda db, now: db.execute("SELECT expires FROM counter WHERE key = ?", (key,)).fetchone())
        return float(row[0]) if row else time.time()

    async def check(self) -> bool:
        try:
            await self._run(lambda db, now: db.execute("SELECT 1").fetchone())
        except sqlite3.Error:
            return False
        return True

    async def reset(self) -> int | None:
        def body(db: sqlite3.Connection, now: float) -> int:
            return sum(db.execute(f"DELETE FROM {table}").rowcount for table in ("entry", "counter", "lease", "holdoff"))

        return await self._run(body)

    async def clear(self, key: str) -> None:
        def body(db: sqlite3.Connection, now: float) -> None:
            db.execute("DELETE FROM entry WHERE key = ?", (key,))
            db.execute("DELETE FROM counter WHERE key = ?", (key,))

        await self._run(body)

    # leases and hold-off

    async def acquire_lease(self, key: str, lease: str, limit: int, ttl: float) -> float:
        def body(db: sqlite3.Connection, now: float) -> float:
            row = db.execute("SELECT until FROM holdoff WHERE key = ?", (key,)).fetchone()
            if row and row[0] > now:
                return float(row[0] - now)
            db.execute("DELETE FROM lease WHERE key = ? AND expires <= ?", (key, now))
            (held,) = db.execute("SELECT COUNT(*) FROM lease WHERE key = ?", (key,)).fetchone()
            if held >= limit:
                return -1.0
            db.execute("INSERT INTO lease VALUES (?, ?, ?)", (lease, key, now + ttl))
            return 0.0

        return await self._run(body)

    async def release_lease(self, key: str, lease: str) -> None:
        await self._run(lambda db, now: db.execute("DELETE FROM lease WHERE id = ?", (lease,)))

    async def renew_leases(self, key: str, leases: list[str], ttl: float) -> None:
        await self._run(lambda db, now: db.executemany("UPDATE lease SET expires = ? WHERE id = ?", [(now + ttl, id_) for id_ in leases]))

    async def hold_off(self, key: str, seconds: float) -> None:
        await self._run(
            lambda db, now: db.execute(
                "INSERT INTO holdoff VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET until = MAX(until, excluded.until)", (key, now + seconds)
            )
        )

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


# Redis: the lease set is a sorted set (score = expiry, from the server's clock); the hold-off a key.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = tonumber(redis.call('GET', KEYS[2]) or '0')
if until_ > now then return tostring(until_ - now) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return '-1' end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return '0'
"""
_RENEW = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expires, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 1)
return 0
"""
_HOLD_OFF = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
if until_ > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], tostring(until_), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 0
"""


class RedisLeases:
    """The lease semaphore and hold-off in Redis (Lua scripts, the server's clock)."""

    def __init__(self, url: str):
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(url)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._hold = self.client.register_script(_HOLD_OFF)

    async def acquire_lease(self, key: str, lease: str, limit: int, ttl: float) -> float:
        return float(await self._acquire(keys=[f"infinisynth:lease:{key}", f"infinisynth:holdoff:{key}"], args=[lease, limit, ttl]))

    async def release_lease(self, key: str, lease: str) -> None:
        await self.client.zrem(f"infinisynth:lease:{key}", lease)

    async def renew_leases(self, key: str, leases: list[str], ttl: float) -> None:
        await self._renew(keys=[f"infinisynth:lease:{key}"], args=[ttl, *leases])

    async def hold_off(self, key: str, seconds: float) -> None:
        await self._hold(keys=[f"infinisynth:holdoff:{key}"], args=[seconds])

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class SharedStore:
    """Where a role's budget lives: a ``limits`` storage for the windows, and the leases."""

    url: str
    windows: Storage
    leases: LeaseStore

    async def aclose(self) -> None:
        await self.leases.aclose()  # with Redis, the windows share its connection pool


def open_store(url: str) -> SharedStore:
    """The store at ``url``: ``redis://`` / ``rediss://`` (the Celery stack's Redis) or ``sqlite:///path``."""
    scheme = urlparse(url).scheme
    if scheme in ("redis", "rediss"):
        leases = RedisLeases(url)
        pool = leases.client.connection_pool
        windows = storage_from_string(f"async+{url}", implementation="redispy", key_prefix="infinisynth", connection_pool=pool)  # type: ignore[arg-type]
        assert isinstance(windows, Storage)
        return SharedStore(url, windows, leases)
    if scheme == "sqlite":
        sqlite = storage_from_string(f"async+{url}")
        assert isinstance(sqlite, SQLiteStorage)
        return SharedStore(url, sqlite, sqlite)
    raise ValueError(f"unsupported limits_url {url!r}: use redis://host:port/db or sqlite:///path")


# -- adaptive concurrency ------------------------------------------------------------------------


class Aimd:
    """The in-flight limit of one role in this process: additive increase, multiplicative decrease."""

    def __init__(self, role: str, minimum: int, maximum: int, adaptive: bool = True):
        self.role = role
        self.minimum = max(1, min(minimum, maximum))
        self.maximum = maximum
        self.adaptive = adaptive
        self.current = maximum
        self.safe = 0  # the highest level a whole window held at since the last halving (0: unknown)
        self.ceiling: int | None = None  # the level of the last overload
        self.changed = 0.0  # monotonic time of the last change
        # Requests sent before the change still in flight keep the endpoint as loaded as before:
        # what answers say counts again once they are all back (``settled``).
        self.in_flight = 0
        self.old = 0
        self.settled = 0.0
        self.successes = 0
        self.clean_windows = 0
        self._fast = self._slow = 0.0
        self._samples = 0

    def sent(self) -> float:
        self.in_flight += 1
        return time.monotonic()

    def done(self, started: float) -> None:
        self.in_flight -= 1
        if started < self.changed:
            self.old -= 1
            if self.old <= 0 and self.settled == math.inf:
                self.settled = time.monotonic()

    def overloaded(self, started: float, why: str) -> None:
        if not self.adaptive or started < self.settled:
            return
        level = self.current
        if self.safe and level > self.safe:
            new = self.safe  # a step above the last level that held failed: back to it
        else:
            new = max(self.minimum, math.floor(level * BACKOFF))
            self.safe = 0
        self.ceiling = level
        self._set(new, why)

    def succeeded(self, started: float, latency: float) -> None:
        if not self.adaptive:
            return
        if self._samples == 0:
            self._fast = self._slow = latency
        else:
            self._fast = 0.8 * self._fast + 0.2 * latency  # the last few answers
            self._slow = 0.99 * self._slow + 0.01 * latency  # the baseline: the last hundred or so
        self._samples += 1
        if started < self.settled:
            return  # sent under the previous limit, or while its requests were still out
        if self._samples >= LATENCY_SAMPLES and self._fast > LATENCY_FACTOR * self._slow:
            why = f"latency {latency:.2f}s, baseline {self._slow:.2f}s"
            self._fast = self._slow = latency  # one halving per jump: the new level is the baseline
            self.overloaded(started, why)
            return
        self.successes += 1
        if self.successes < self.current:
            return
        self.successes = 0  # a whole window at this level held
        self.safe = self.current
        if self.ceiling is not None and self.current >= self.ceiling:
            self.ceiling = None  # a probe above the last overload held: capacity grew back
        if self.current >= self.maximum:
            return
        if self.ceiling is not None and self.current + 1 >= self.ceiling:
            self.clean_windows += 1
            if self.clean_windows < PROBE_WINDOWS:
                return
        self._set(self.current + 1, "a window of successful answers")

    def _set(self, new: int, why: str) -> None:
        self.changed = time.monotonic()
        self.old = self.in_flight
        self.settled = self.changed if self.old == 0 else math.inf
        self.successes = 0
        self.clean_windows = 0
        if new != self.current:
            log.info("%s: concurrency limit %d -> %d (%s)", self.role, self.current, new, why)
            self.current = new


# -- one role's limiter --------------------------------------------------------------------------


class RoleLimiter:
    """Every limit of one role, for one client: use :meth:`attempt` around each HTTP attempt and
    :meth:`spend_tokens` once per call."""

    def __init__(self, config: RoleConfig, store: SharedStore, lease_ttl: float = LEASE_TTL):
        self.config = config
        self.store = store
        self.key = role_key(config)
        self.lease_ttl = lease_ttl
        self.aimd = Aimd(config.role, config.min_concurrency, config.max_concurrency, config.adaptive)
        self._windows = MovingWindowRateLimiter(store.windows)
        self._requests = self._window(config.requests_per_minute, 1)
        unit, self._tokens = 1, None
        if config.tokens_per_minute:
            seconds, amount = window_for(config.tokens_per_minute, smallest=2 * config.max_tokens)
            unit = max(1, math.ceil(amount / TOKEN_UNITS))
            self._tokens = RateLimitItemPerSecond(max(1, amount // unit), seconds)
        self._token_unit = unit
        self._turn = asyncio.Lock()  # one coroutine of this process asks the store at a time
        self._freed = asyncio.Event()  # a slot of this process came free: ask again at once
        self._held: set[str] = set()  # leases of this process in the store (in use or spare)
        self._spare: list[tuple[str, float]] = []  # (lease, taken at): freed while a call here waited
        self._waiting = 0
        self._hold_until = 0.0  # monotonic: this process's copy of the hold-off
        self._heartbeat: asyncio.Task[None] | None = None

    @staticmethod
    def _window(per_minute: float | None, smallest: float) -> RateLimitItemPerSecond | None:
        if not per_minute:
            return None
        seconds, amount = window_for(per_minute, smallest)
        return RateLimitItemPerSecond(amount, seconds)

    @property
    def current(self) -> int:
        """The in-flight limit now (AIMD's, between ``min_concurrency`` and ``max_concurrency``)."""
        return self.aimd.current

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[float]:
        """A concurrency slot and a request of the budget, for one HTTP attempt; yields its start
        (monotonic), which :meth:`observe` takes.

        A slot freed while another call of this process waits passes to it without a round trip
        to the store, for up to :data:`HANDOFF_AGE` after the store granted it (then it goes
        back, so other processes get their turn).
        """
        self._waiting += 1
        try:
            async with self._turn:
                lease, taken = await self._take_slot()
        finally:
            self._waiting -= 1
            if not self._waiting and self._spare:
                await self._return_spare()
        started = None
        try:
            if self._requests is not None:
                await self._hit(self._requests, "requests", 1)
            started = self.aimd.sent()
            yield started
        finally:
            if started is not None:
                self.aimd.done(started)
            self._freed.set()
            if self._waiting and time.monotonic() - taken < HANDOFF_AGE and len(self._held) <= self.current:
                self._spare.append((lease, taken))
            else:
                self._held.discard(lease)
                await self.store.leases.release_lease(self.key, lease)

    async def _take_slot(self) -> tuple[str, float]:
        poll = POLL_MIN
        while True:
            wait = self._hold_until - time.monotonic()
            if wait > 0:  # the role is held off (Retry-After)
                await asyncio.sleep(wait)
                continue
            while self._spare:
                lease, taken = self._spare.pop()
                if time.monotonic() - taken < HANDOFF_AGE and len(self._held) <= self.current:
                    return lease, taken
                self._held.discard(lease)
                await self.store.leases.release_lease(self.key, lease)
            self._freed.clear()
            lease = uuid.uuid4().hex
            wait = await self.store.leases.acquire_lease(self.key, lease, self.current, self.lease_ttl)
            if wait == 0:
                self._held.add(lease)
                self._start_heartbeat()
                return lease, time.monotonic()
            if wait > 0:  # held off by another process's Retry-After
                self._hold_until = max(self._hold_until, time.monotonic() + wait)
                continue
            try:  # all slots taken: one of ours freeing wakes us, else look again soon
                await asyncio.wait_for(self._freed.wait(), poll)
            except TimeoutError:
                poll = min(poll * 2, POLL_MAX)

    async def _return_spare(self) -> None:
        spare, self._spare = self._spare, []
        for lease, _ in spare:
            self._held.discard(lease)
            await self.store.leases.release_lease(self.key, lease)

    async def spend_tokens(self, estimate: int) -> None:
        """Take ``estimate`` tokens of the per-minute budget (one call larger than a window takes it all)."""
        if self._tokens is not None:
            cost = min(math.ceil(estimate / self._token_unit), self._tokens.amount)
            await self._hit(self._tokens, "tokens", cost)

    async def _hit(self, item: RateLimitItemPerSecond, what: str, cost: int) -> None:
        while not await self._windows.hit(item, "infinisynth", self.key, what, cost=cost):
            stats = await self._windows.get_window_stats(item, "infinisynth", self.key, what)
            await asyncio.sleep(min(max(stats.reset_time - time.time(), POLL_MIN), item.get_expiry()))

    async def observe(self, started: float, status: int, headers: Mapping[str, str]) -> None:
        """What an HTTP answer says about the endpoint's load: AIMD, and a Retry-After for everyone."""
        if status in OVERLOAD_STATUSES:
            self.aimd.overloaded(started, f"HTTP {status}")
            seconds = retry_after(headers)
            if seconds:
                self._hold_until = max(self._hold_until, time.monotonic() + seconds)
                await self.store.leases.hold_off(self.key, seconds)
        elif status < 400:
            self.aimd.succeeded(started, time.monotonic() - started)

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            if self._held:
                try:
                    await self.store.leases.renew_leases(self.key, list(self._held), self.lease_ttl)
                except Exception as exc:  # the store is away: the leases may lapse, the calls go on
                    log.warning("%s: could not renew concurrency leases: %s", self.config.role, exc)

    async def aclose(self) -> None:
        await self._return_spare()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
