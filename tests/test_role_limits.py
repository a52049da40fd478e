"""A role's limits hold for the whole deployment, measured at the endpoint (llm/limits.py).

Several OS processes use one role against the scripted server (a real HTTP server) and a shared
store (the machine-local SQLite file, or Redis): the server's count of requests in any window
stays within the role's requests per minute and its requests in flight within
``max_concurrency``; a slot held by a killed process expires; a Retry-After holds every client
of the role back; and when the endpoint's capacity halves, adaptive concurrency finds the new
capacity and keeps 429s rare.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infinisynth.llm import LLMClient, RoleConfig
from tests.support.role_worker import HALVING_LATENCY, busiest, drive_through_halving, run_processes
from tests.support.servers import ScriptedOpenAI, scripted_openai
from tests.support.services import running_redis

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 3


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'limits.sqlite'}"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'limits.sqlite'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def server() -> Iterator[ScriptedOpenAI]:
    with scripted_openai() as handle:
        yield handle


def role(server: ScriptedOpenAI, **settings: Any) -> dict[str, Any]:
    return {"role": "generator", "base_url": server.base_url, "model": "scripted", "timeout_s": 10.0, **settings}


def arrivals(server: ScriptedOpenAI) -> dict[str, Any]:
    return server._call("GET", "/_control/arrivals")


# -- across processes ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_requests_per_minute_hold_across_processes(server: ScriptedOpenAI, store_url: str) -> None:
    # 300 per minute = 5 a second, for 3 processes together (each would send 4x that alone).
    seconds, rpm = 30, 300
    summaries = run_processes(PROCESSES, role(server, requests_per_minute=rpm, max_concurrency=16, workers=4, seconds=seconds), store_url)

    times = arrivals(server)["arrivals"]
    assert all(s["failed"] == 0 for s in summaries) and sum(s["done"] for s in summaries) == len(times)
    assert busiest(times, 20) <= 1.05 * rpm / 3  # any 20 s at the server: within 5% of 100
    # Spread over the minute (5 a second), not sent in bursts; a process the loaded machine
    # pauses for a moment sends its requests a little late, hence the slack at this scale.
    assert busiest(times, 5) <= 1.3 * 5 * rpm / 60
    assert len(times) >= 0.9 * rpm * seconds / 60  # and the budget is used
    assert min(s["done"] for s in summaries) > 0  # by every process


@pytest.mark.timeout(90)
def test_concurrency_holds_across_processes(server: ScriptedOpenAI, store_url: str) -> None:
    server.script([{"match": "call", "actions": [{"delay": 0.3}]}])
    summaries = run_processes(PROCESSES, role(server, max_concurrency=4, workers=8, seconds=6), store_url)

    stats = server.stats()
    assert stats["max_in_flight"] == 4  # never more across the three processes, and all used
    assert sum(s["done"] for s in summaries) >= 0.8 * 6 * 4 / 0.3


LEASE_HOLDER = textwrap.dedent(
    """
    import asyncio, sys, time
    from infinisynth.llm.limits import open_store

    async def main():
        store = open_store(sys.argv[1])
        for lease in ("a", "b"):
            assert await store.leases.acquire_lease("role-key", lease, 2, 2.0) == 0
        print("HELD", flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


@pytest.mark.timeout(60)
def test_a_killed_process_slots_expire(store_url: str) -> None:
    from infinisynth.llm.limits import open_store

    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, store_url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    killed = time.monotonic()

    async def take() -> list[float]:
        store = open_store(store_url)
        try:
            first = await store.leases.acquire_lease("role-key", "c", 2, 30.0)  # both slots still held
            while await store.leases.acquire_lease("role-key", "c", 2, 30.0) != 0:
                await asyncio.sleep(0.05)
            return [first, time.monotonic() - killed]
        finally:
            await store.aclose()

    first, waited = asyncio.run(take())
    assert first < 0  # the dead process's leases count until they expire ...
    assert waited < 4.0  # ... 2 s after their last renewal, not forever


@pytest.mark.timeout(60)
def test_retry_after_holds_back_every_client_of_the_role(server: ScriptedOpenAI, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two clients with nothing in common but the store (as two tasks would be): the first one's
    # 429 with Retry-After: 2 keeps the second one's request back too.
    monkeypatch.setenv("INFINISYNTH_LIMITS_URL", sqlite_url)
    server.script([{"match": "busy", "actions": [{"status": 429, "retry_after": 2}, {"default": True}]}])
    config = RoleConfig(**role(server))

    async def run() -> None:
        async with LLMClient(config) as first, LLMClient(config) as second:
            busy = asyncio.create_task(first.chat([{"role": "user", "content": "busy"}], stage="a"))
            await asyncio.sleep(0.3)
            await second.chat([{"role": "user", "content": "another"}], stage="b")
            await busy

    asyncio.run(run())
    answers = arrivals(server)["answers"]
    refused = next(t for t, status in answers if status == 429)
    assert all(t >= refused + 1.9 for t, status in answers if status == 200)
    assert len(answers) == 3


# -- adaptive concurrency ------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_adaptive_concurrency_follows_capacity_that_halves(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Capacity 24, then 12 (each answer takes 0.2 s; a request beyond capacity gets 429 with
    Retry-After 0.1 s): the client, configured for 32 at once, settles at the new capacity."""
    monkeypatch.setenv("INFINISYNTH_LIMITS_URL", sqlite_url)
    summary = asyncio.run(drive_through_halving(sqlite_url, 24, 12))
    measured = summary["measured"]
    assert measured["throughput"] >= 0.9 * 12 / HALVING_LATENCY, summary
    assert measured["share_429"] < 0.02, summary
    assert summary["limit_at_end"] <= 13, summary


@pytest.mark.timeout(60)
def test_latency_well_above_its_baseline_halves_the_limit_once(server: ScriptedOpenAI, sqlite_url: str) -> None:
    server.script([{"match": "call", "actions": [{"delay": 0.02}]}])
    config = RoleConfig(**role(server, max_concurrency=8, limits_url=sqlite_url))

    async def run() -> list[int]:
        async with LLMClient(config) as client:

            async def batch(tag: str, n: int) -> None:
                await asyncio.gather(*(client.chat([{"role": "user", "content": f"call {tag} {i}"}], stage="s") for i in range(n)))

            await batch("quick", 120)
            assert client.concurrency_now == 8  # steady latency: nothing to adapt to
            await asyncio.to_thread(server.script, [{"match": "call", "actions": [{"delay": 0.3}]}])
            limits = []
            for round_ in range(4):
                await batch(f"slow {round_}", 8)
                limits.append(client.concurrency_now)
            return limits

    limits = asyncio.run(run())
    assert limits[0] == 4  # 15x the baseline: halved ...
    assert min(limits) == 4 and limits[-1] > 4  # ... once, then the new latency is the baseline and it recovers
