"""A role's limits across processes, and adaptive concurrency, against the scripted server.

    .venv/bin/python benchmarks/bench_role_limits.py [--seconds 70] [--rpm 120]

1. **Requests per minute across processes**: 3 processes of one role (4 calls in flight each)
   share ``--rpm`` through the machine-local SQLite store, then through Redis (a throwaway
   ``redis-server``). Printed: the busiest 60 s at the server against the limit, the busiest
   10 s against a sixth of it, and the rate achieved.
2. **Concurrency across processes**: 3 processes, ``max_concurrency`` 4, answers taking 0.3 s:
   the server's most requests in flight at once.
3. **Capacity that halves**: one process, ``max_concurrency`` 32, the endpoint serving 24 at once
   then 12 (each answer 0.2 s; beyond capacity a 429 with Retry-After 0.1 s). Printed:
   throughput against the new capacity and the share of 429s, measured 5-17 s after the drop,
   and how long the client took to come down to it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support; the library itself is installed

from tests.support.role_worker import HALVING_LATENCY, busiest, drive_through_halving, run_processes  # noqa: E402
from tests.support.servers import scripted_openai  # noqa: E402
from tests.support.services import running_redis  # noqa: E402

PROCESSES = 3


def rpm_accuracy(store: str, limits_url: str, rpm: float, seconds: float) -> None:
    with scripted_openai(latency=0.05) as server:
        settings: dict[str, Any] = {
            "role": "generator", "base_url": server.base_url, "model": "scripted",
            "requests_per_minute": rpm, "max_concurrency": 16, "workers": 4, "seconds": seconds,
        }  # fmt: skip
        summaries = run_processes(PROCESSES, settings, limits_url)
        times = server._call("GET", "/_control/arrivals")["arrivals"]
    span = max(times) - min(times)
    minute = busiest(times, 60) if span >= 60 else None
    print(
        f"rpm {store:6s}: {len(times)} requests from {PROCESSES} processes ({[s['done'] for s in summaries]}) in {span:.1f} s; "
        + (f"busiest 60 s {minute} = {minute / rpm:.3f} x limit; " if minute is not None else "")
        + f"busiest 10 s {busiest(times, 10)} = {busiest(times, 10) / (rpm / 6):.3f} x its share; "
        f"rate {len(times) / span * 60:.1f}/min = {len(times) / span * 60 / rpm:.3f} x limit"
    )


def concurrency(store: str, limits_url: str) -> None:
    with scripted_openai() as server:
        server.script([{"match": "call", "actions": [{"delay": 0.3}]}])
        settings = {"role": "generator", "base_url": server.base_url, "model": "scripted", "max_concurrency": 4, "workers": 8, "seconds": 6}
        run_processes(PROCESSES, settings, limits_url)
        stats = server.stats()
        times = server._call("GET", "/_control/arrivals")["arrivals"]
    rate = len(times) / (max(times) - min(times) + 0.3)
    print(
        f"concurrency {store:6s}: max_concurrency 4, {PROCESSES} processes x 8 calls: at most {stats['max_in_flight']} in flight "
        f"at the server; {rate:.1f} calls/s (ideal {4 / 0.3:.1f})"
    )


def halving(limits_url: str) -> None:
    result = asyncio.run(drive_through_halving(limits_url, 24, 12))
    measured, ideal = result["measured"], 12 / HALVING_LATENCY
    print(
        f"capacity 24 -> 12: before {result['before']:.1f} req/s (ideal {24 / HALVING_LATENCY:.0f}); after: {measured['throughput']:.1f} req/s "
        f"= {measured['throughput'] / ideal:.3f} of the new capacity, 429s {100 * measured['share_429']:.2f}% of {measured['requests']} requests; "
        f"limit at 12 after {result['adapted_after_s']} s, {result['limit_at_end']} at the end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=70, help="length of each requests-per-minute run")
    parser.add_argument("--rpm", type=float, default=120)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, running_redis() as redis_url:
        local = f"sqlite://{Path(folder, 'limits.sqlite')}"
        for store, url in (("sqlite", local), ("redis", redis_url)):
            rpm_accuracy(store, url, args.rpm, args.seconds)
        for store, url in (("sqlite", local), ("redis", redis_url)):
            concurrency(store, url)
        halving(local)


if __name__ == "__main__":
    main()
