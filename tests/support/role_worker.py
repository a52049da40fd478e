"""One process using one role, as a mapped task would: ``python -m tests.support.role_worker '<json>'``.

The JSON holds the role's settings (``RoleConfig`` fields) plus ``workers`` (calls in flight from
this process) and ``seconds`` (how long to keep calling). The process prints ``READY`` once
imported, starts calling when a line arrives on stdin (so several processes start together), and
prints a JSON summary at the end: calls answered, calls rejected, the adaptive limit at the end.
The shared limits store comes from ``INFINISYNTH_LIMITS_URL`` like in a task.

:func:`run_processes` starts such processes together; :func:`drive_through_halving` loads one
role in this process through an endpoint whose capacity halves (tests and benchmarks share them).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from infinisynth.llm import LLMClient, LLMRejection, RoleConfig
from tests.support.servers import scripted_openai

HALVING_LATENCY = 0.2  # seconds per answer in drive_through_halving


async def drive(settings: dict[str, Any]) -> dict[str, Any]:
    workers, seconds = int(settings.pop("workers")), float(settings.pop("seconds"))
    config = RoleConfig(**settings)
    done, failed = 0, 0
    async with LLMClient(config) as client:
        stop = time.monotonic() + seconds

        async def loop(worker: int) -> None:
            nonlocal done, failed
            i = 0
            while time.monotonic() < stop:
                i += 1
                try:
                    await client.chat([{"role": "user", "content": f"call {worker}-{i} of {id(client)}"}], stage="load", max_tokens=16)
                    done += 1
                except LLMRejection:
                    failed += 1

        # Each loop finishes the call it is in: a cancelled request would free its slot while the
        # server still works on it.
        await asyncio.gather(*(loop(w) for w in range(workers)))
        limit = client.concurrency_now
    return {"done": done, "failed": failed, "concurrency_now": limit}


def run_processes(count: int, settings: dict[str, Any], limits_url: str) -> list[dict[str, Any]]:
    """``count`` worker processes of one role, started together; their summaries."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "INFINISYNTH_LIMITS_URL": limits_url}
    argv = [sys.executable, "-m", "tests.support.role_worker", json.dumps(settings)]
    processes = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root, env=env) for _ in range(count)]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "READY"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        return [json.loads(process.communicate(timeout=float(settings["seconds"]) + 60)[0]) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def busiest(times: list[float], window: float) -> int:
    """The most of ``times`` that fall in any span of ``window`` seconds."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


async def drive_through_halving(
    limits_url: str, capacity: int, halved_to: int, before: float = 6.0, settle: float = 5.0, measure: float = 12.0
) -> dict[str, Any]:
    """Load one role (``max_concurrency`` 4/3 of ``capacity``) through a server whose capacity
    drops to ``halved_to`` (beyond it: 429 with Retry-After 0.1 s); the server's figures once the
    client had ``settle`` seconds to adapt."""
    with scripted_openai(latency=HALVING_LATENCY) as server:
        control = {"overflow_status": 429, "retry_after": 0.1}
        server._call("POST", "/_control/capacity", {"capacity": capacity, **control})
        config = RoleConfig(
            role="generator",
            base_url=server.base_url,
            model="scripted",
            max_concurrency=capacity * 4 // 3,
            max_retries=10,
            limits_url=limits_url,
        )
        limits: list[tuple[float, int]] = []
        async with LLMClient(config) as client:
            stop = time.time() + before + settle + measure

            async def loop(worker: int) -> None:
                i = 0
                while time.time() < stop:
                    i += 1
                    await client.chat([{"role": "user", "content": f"call {worker}-{i}"}], stage="load", max_tokens=16)

            tasks = [asyncio.create_task(loop(w)) for w in range(2 * capacity)]
            await asyncio.sleep(before)
            await asyncio.to_thread(server._call, "POST", "/_control/capacity", {"capacity": halved_to, **control})
            halved = time.time()
            while time.time() < stop:
                limits.append((time.time() - halved, client.concurrency_now))
                await asyncio.sleep(0.25)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            limit_at_end = client.concurrency_now
        answers = server._call("GET", "/_control/arrivals")["answers"]
    start, end = halved + settle, halved + settle + measure
    window = [status for t, status in answers if start <= t < end]
    ok = sum(1 for status in window if status == 200)
    return {
        "measured": {"throughput": ok / measure, "share_429": (len(window) - ok) / max(1, len(window)), "requests": len(window)},
        "before": sum(1 for t, status in answers if status == 200 and t < halved) / before,
        "limit_at_end": limit_at_end,
        "adapted_after_s": next((round(t, 2) for t, limit in limits if limit <= halved_to), None),
    }


def main() -> None:
    settings = json.loads(sys.argv[1])
    print("READY", flush=True)
    sys.stdin.readline()
    print(json.dumps(asyncio.run(drive(settings))), flush=True)


if __name__ == "__main__":
    main()
