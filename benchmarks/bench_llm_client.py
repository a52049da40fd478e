"""LLM client throughput against the scripted server: 200 ms latency, capacity 64 (ideal 320 req/s).

    make bench-client        (or: .venv/bin/python benchmarks/bench_llm_client.py --requests 5000)

Reports throughput as a fraction of ideal (target >= 0.9), the client's CPU time per request and
its peak memory. The server runs in its own process, so its CPU is not counted against the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support; the library itself is installed

from infinisynth.llm import LLMClient, RoleConfig, UsageMeter  # noqa: E402
from tests.support.servers import scripted_openai  # noqa: E402


class Verdict(BaseModel):
    problem: str
    score: int = Field(ge=1, le=10)


async def drive(base_url: str, requests: int, concurrency: int) -> tuple[int, int]:
    config = RoleConfig(role="generator", base_url=base_url, model="scripted", max_concurrency=concurrency, structured_output="json_schema")
    usage = UsageMeter()
    async with LLMClient(config, usage) as client:
        window = asyncio.Semaphore(concurrency * 2)  # bounded set of live coroutines, like the runner

        async def one(i: int) -> bool:
            async with window:
                messages = [{"role": "user", "content": f"Write problem number {i} about parsing logs."}]
                answer = await client.structured(messages, Verdict, stage="bench")
                return bool(answer.problem)

        results = await asyncio.gather(*(one(i) for i in range(requests)))
    return sum(results), usage.snapshot()["generator/bench"]["requests"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=0, help="client max_concurrency; 0 = the capacity")
    args = parser.parse_args()
    concurrency = args.concurrency or args.capacity
    ideal = args.capacity / args.latency
    with scripted_openai(latency=args.latency, capacity=args.capacity) as server:
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        ok, sent = asyncio.run(drive(server.base_url, args.requests, concurrency))
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        served = server.stats()["total"]
    throughput = args.requests / wall
    result = {
        "requests": args.requests,
        "client_max_concurrency": concurrency,
        "valid_answers": ok,
        "requests_sent": sent,
        "server_saw": served,
        "wall_s": round(wall, 2),
        "throughput_rps": round(throughput, 1),
        "ideal_rps": ideal,
        "fraction_of_ideal": round(throughput / ideal, 3),
        "client_cpu_ms_per_request": round(1000 * cpu / args.requests, 3),
        "client_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
