"""Token and request accounting per (role, stage), for task logs and partition manifests.

``requests`` are the calls sent to a model (what a run pays for); ``cached_requests`` the answers
the response cache gave instead (:mod:`infinisynth.llm.cache`), which cost no tokens;
``batch_requests`` the part of ``requests`` answered through a provider batch (:mod:`infinisynth.llm.batch`).

``dollars`` is what the requests cost at the role's price (:mod:`infinisynth.llm.prices`), added
as each request is recorded: a meter knows its roles' prices (``UsageMeter(prices=...)``) and a
snapshot carries the dollars, so merged snapshots (shards, checkpoints, commits) add up without
prices. Requests of a role with no known price count in ``unpriced_requests`` and cost 0; answers
of the response cache cost 0. A batch request is priced at the batch price: ``record(...,
batch=True)``, or ``record(...)`` then ``record_batch(..., prompt_tokens=, completion_tokens=)``.
``cached_prompt_tokens`` are input tokens the provider served from its own prompt cache
(priced at ``cached_input``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infinisynth.llm.prices import Price


@dataclass
class Usage:
    requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_requests: int = 0
    batch_requests: int = 0  # of ``requests``, those answered through a provider batch (batch price)
    cached_prompt_tokens: int = 0  # of prompt_tokens: served from the provider's prompt cache
    unpriced_requests: int = 0  # of requests: the role's model has no known price (cost 0)
    dollars: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def priced(self) -> bool:
        """False when every request was of an unpriced model (its 0 dollars say nothing)."""
        return not self.requests or self.unpriced_requests < self.requests

    def add(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Usage:
        """From a snapshot entry (older ones lack the newer counters: 0)."""
        usage = cls()
        for f in fields(cls):
            setattr(usage, f.name, (float if f.name == "dollars" else int)(values.get(f.name, 0) or 0))
        return usage


class UsageMeter:
    """Thread-safe counters keyed by ``role/stage``; ``prices`` by role (None or absent: unpriced)."""

    def __init__(self, prices: Mapping[str, Price | None] | None = None) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, Usage] = defaultdict(Usage)
        self.prices: dict[str, Price | None] = dict(prices or {})

    def record(
        self,
        role: str,
        stage: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        failed: bool = False,
        cached_prompt_tokens: int = 0,
        batch: bool = False,
    ) -> None:
        price = self.prices.get(role)
        dollars = 0.0
        if price is not None:
            dollars = price.dollars(
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_prompt_tokens=cached_prompt_tokens, batch=batch
            )
        with self._lock:
            usage = self._usage[f"{role}/{stage}"]
            usage.requests += 1
            usage.failed_requests += int(failed)
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
            usage.cached_prompt_tokens += cached_prompt_tokens
            usage.batch_requests += int(batch)
            usage.unpriced_requests += int(price is None)
            usage.dollars += dollars

    def record_cached(self, role: str, stage: str) -> None:
        """One answer served by the response cache: no request, no tokens."""
        with self._lock:
            self._usage[f"{role}/{stage}"].cached_requests += 1

    def record_batch(self, role: str, stage: str, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """One answer that came from a provider batch (its request and tokens are recorded as usual).
        Given that request's tokens, its cost moves from the interactive to the batch price."""
        price = self.prices.get(role)
        refund = 0.0
        if price is not None and (prompt_tokens or completion_tokens):
            interactive = price.dollars(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            refund = interactive - price.dollars(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, batch=True)
        with self._lock:
            usage = self._usage[f"{role}/{stage}"]
            usage.batch_requests += 1
            usage.dollars -= refund

    def merge(self, snapshot: Mapping[str, Mapping[str, Any]]) -> None:
        """Add a snapshot (from a checkpoint or another task) into this meter."""
        with self._lock:
            for key, values in snapshot.items():
                self._usage[key].add(Usage.from_dict(values))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                key: {**asdict(u), "dollars": round(u.dollars, 6), "total_tokens": u.total_tokens} for key, u in sorted(self._usage.items())
            }

    def totals(self) -> Usage:
        """Everything this meter counted, all roles and stages together."""
        with self._lock:
            return sum_usage(self._usage.values())

    def table(self) -> str:
        """A fixed-width table for task logs: requests, tokens and dollars per role/stage."""
        header = ("role/stage", "requests", "failed", "cached", "batch", "prompt tok", "completion tok", "dollars")
        rows: list[tuple[str, ...]] = [header]
        for key, u in self.snapshot().items():
            counts = (
                u["requests"],
                u["failed_requests"],
                u["cached_requests"],
                u["batch_requests"],
                u["prompt_tokens"],
                u["completion_tokens"],
            )
            rows.append((key, *map(str, counts), dollars_text(u)))
        return format_table(rows)


def sum_usage(entries: Any) -> Usage:
    """The sum of usages (or snapshot entries)."""
    total = Usage()
    for entry in entries:
        total.add(entry if isinstance(entry, Usage) else Usage.from_dict(entry))
    return total


def dollars_text(usage: Mapping[str, Any] | Usage) -> str:
    """``0.0123`` (dollars), or ``unpriced`` when every request was of a model with no known price."""
    u = usage if isinstance(usage, Usage) else Usage.from_dict(usage)
    return f"{u.dollars:.4f}" if u.priced else "unpriced"


def format_table(rows: list[tuple[Any, ...]]) -> str:
    """A fixed-width text table: numeric columns right-aligned, the header underlined."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    numeric = [all(_is_number(row[i]) or row[i] in ("", "-") for row in cells[1:]) and len(cells) > 1 for i in range(len(widths))]
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
