"""Peak memory and CPU time of a block of a benchmark, shared by the scale benchmarks.

Two memory figures, sampled every 20 ms by a background thread: RSS, and RssAnon (what the
process holds itself; RSS also counts file pages mapped from disk, e.g. a memory-mapped index,
which the kernel can drop). Each is reported at its peak and above its value when the block
began. Blocks nest (each ``measure`` has its own sampler).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

MB = 2**20


def anon_rss() -> int:
    """RssAnon of this process in bytes (0 where /proc has no such line)."""
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Wall time, CPU time (all threads), and peak RSS and RssAnon during a block."""

    def __init__(self, interval: float = 0.02):
        self.process = psutil.Process(os.getpid())
        self.interval = interval

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        result: dict[str, float] = {}
        start = {"rss": self.process.memory_info().rss, "anon": anon_rss()}
        peaks = dict(start)
        stop = threading.Event()
        cpu = self.process.cpu_times()

        def sample() -> None:
            while not stop.is_set():
                peaks["rss"] = max(peaks["rss"], self.process.memory_info().rss)
                peaks["anon"] = max(peaks["anon"], anon_rss())
                time.sleep(self.interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        started = time.perf_counter()
        try:
            yield result
        finally:
            result["seconds"] = round(time.perf_counter() - started, 2)
            now = self.process.cpu_times()
            result["cpu_seconds"] = round(now.user + now.system - cpu.user - cpu.system, 1)
            stop.set()
            thread.join()
            result["peak_rss_mb"] = round(peaks["rss"] / MB, 1)
            result["peak_anon_mb"] = round(peaks["anon"] / MB, 1)
            result["peak_above_start_mb"] = round((peaks["rss"] - start["rss"]) / MB, 1)  # RSS
            result["peak_anon_above_start_mb"] = round((peaks["anon"] - start["anon"]) / MB, 1)
