"""LLM client throughput against the scripted server: 200 ms latency, capacity 64 (ideal 320 req/s).

    make bench-client        (or: .venv/bin/python benchmarks/bench_llm_client.py --requests 5000)

Reports throughput as a fraction of ideal (target >= 0.9), the client's CPU time per request and
its peak memory, for each response-cache mode:

- ``off``: no cache, every call goes to the server;
- ``cold``: the cache on and empty: every call is looked up (a miss), sent, and its answer stored;
- ``warm``: the same calls again: every answer comes from the cache, the server sees none
  (throughput is then bounded by the client alone, so its fraction of ideal exceeds 1).

The cache lives in a temporary local folder (``file://``). The server runs in its own process, so
its CPU is not counted against the client. Peak memory is the process's: the cache modes include
pyarrow, which the project's ``Store`` imports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support; the library itself is installed

from infinisynth.llm import LLMClient, ResponseCache, RoleConfig, UsageMeter  # noqa: E402
from tests.support.servers import ScriptedOpenAI, scripted_openai  # noqa: E402


class Verdict(BaseModel):
    problem: str
    score: int = Field(ge=1, le=10)


async def drive(base_url: str, requests: int, concurrency: int, cache: ResponseCache | None) -> tuple[int, dict[str, int]]:
    config = RoleConfig(role="generator", base_url=base_url, model="scripted", max_concurrency=concurrency, structured_output="json_schema")
    usage = UsageMeter()
    async with LLMClient(config, usage, cache) as client:
        window = asyncio.Semaphore(concurrency * 2)  # bounded set of live coroutines, like the runner

        async def one(i: int) -> bool:
            async with window:
                messages = [{"role": "user", "content": f"Write problem number {i} about parsing logs."}]
                answer = await client.structured(messages, Verdict, stage="bench")
                return bool(answer.problem)

        results = await asyncio.gather(*(one(i) for i in range(requests)))
    return sum(results), usage.snapshot()["generator/bench"]


def measure(server: ScriptedOpenAI, mode: str, args: argparse.Namespace, concurrency: int, cache_root: str) -> dict[str, Any]:
    cache = None
    if mode != "off":
        from infinisynth.storage import Store  # pyarrow: its memory shows in the cache modes' peak RSS only

        cache = ResponseCache(Store(cache_root))
    served_before = server.stats()["total"]
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    ok, usage = asyncio.run(drive(server.base_url, args.requests, concurrency, cache))
    wall = time.perf_counter() - wall0
    if cache is not None:
        cache.close()  # its writes are done (the client flushed them); counted in the CPU below
    cpu = time.process_time() - cpu0
    throughput = args.requests / wall
    ideal = args.capacity / args.latency
    return {
        "cache": mode,
        "requests": args.requests,
        "client_max_concurrency": concurrency,
        "valid_answers": ok,
        "requests_sent": usage["requests"],
        "answers_from_cache": usage["cached_requests"],
        "server_saw": server.stats()["total"] - served_before,
        "wall_s": round(wall, 2),
        "throughput_rps": round(throughput, 1),
        "ideal_rps": ideal,
        "fraction_of_ideal": round(throughput / ideal, 3),
        "client_cpu_ms_per_request": round(1000 * cpu / args.requests, 3),
        "client_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=0, help="client max_concurrency; 0 = the capacity")
    parser.add_argument(
        "--cache", nargs="+", choices=["off", "cold", "warm"], default=["off", "cold", "warm"], help="modes to run, in order"
    )
    args = parser.parse_args()
    concurrency = args.concurrency or args.capacity
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-llm-cache-") as folder,
        scripted_openai(latency=args.latency, capacity=args.capacity) as server,
    ):
        cache_root = f"file://{folder}"
        for mode in args.cache:
            if mode == "warm" and "cold" not in args.cache:
                measure(server, "cold", args, concurrency, cache_root)  # fill the cache first, unmeasured
            results.append(measure(server, mode, args, concurrency, cache_root))
    print(json.dumps(results if len(results) > 1 else results[0], indent=2))


if __name__ == "__main__":
    main()
