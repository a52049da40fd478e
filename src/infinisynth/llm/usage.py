"""Token and request accounting per (role, stage), for task logs and partition manifests.

``requests`` are the calls sent to a model (what a run pays for); ``cached_requests`` the answers
the response cache gave instead (:mod:`infinisynth.llm.cache`), which cost no tokens.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Usage:
    requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.failed_requests += other.failed_requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_requests += other.cached_requests


class UsageMeter:
    """Thread-safe counters keyed by ``role/stage``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, Usage] = defaultdict(Usage)

    def record(self, role: str, stage: str, *, prompt_tokens: int = 0, completion_tokens: int = 0, failed: bool = False) -> None:
        with self._lock:
            usage = self._usage[f"{role}/{stage}"]
            usage.requests += 1
            usage.failed_requests += int(failed)
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens

    def record_cached(self, role: str, stage: str) -> None:
        """One answer served by the response cache: no request, no tokens."""
        with self._lock:
            self._usage[f"{role}/{stage}"].cached_requests += 1

    def merge(self, snapshot: dict[str, dict[str, int]]) -> None:
        """Add a snapshot (from a checkpoint or another task) into this meter."""
        with self._lock:
            for key, values in snapshot.items():
                self._usage[key].add(Usage(**{k: int(values.get(k, 0)) for k in Usage.__dataclass_fields__}))

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {key: {**asdict(u), "total_tokens": u.total_tokens} for key, u in sorted(self._usage.items())}

    def table(self) -> str:
        """A fixed-width table for task logs."""
        rows: list[tuple[str, ...]] = [("role/stage", "requests", "failed", "cached", "prompt tok", "completion tok")]
        for key, u in self.snapshot().items():
            counts = (u["requests"], u["failed_requests"], u["cached_requests"], u["prompt_tokens"], u["completion_tokens"])
            rows.append((key, *map(str, counts)))
        return format_table(rows)


def format_table(rows: list[tuple[Any, ...]]) -> str:
    """A fixed-width text table: numeric columns right-aligned, the header underlined."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(widths))]
    lines = []
    for n, row in enumerate(cells):
        line = "  ".join(c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(row))
        lines.append(line.rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
