"""Static verification: every answered problem's code must pass the lint gate, or the pair goes.

Infinite-Instruct's Mechanism 3: a prompt-response pair whose code has an error-level static
finding is discarded - no repair, no execution. This is a batch step: it makes no model calls, so a
whole shard is checked in one gate call (few linter processes for many rows), and its shard counts
per language become the discard rate per language in the stage's manifest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from infinisynth.llm.usage import format_table
from infinisynth.settings import ConnectionLookup, env_connection, lint_service_url
from infinisynth.stages.base import BatchStage, Outcome, Passed, Rejected, Row
from infinisynth.stages.respond import RESPONSE_SCHEMA
from infinisynth.verify.gate import GateSettings, LocalGate
from infinisynth.verify.model import Gate
from infinisynth.verify.responses import VERDICT_FIELDS, ResponseVerdict, verify_responses

log = logging.getLogger(__name__)

VERIFIED_SCHEMA = pa.schema([*RESPONSE_SCHEMA, *VERDICT_FIELDS])
NOT_CHECKED = "not_checked"


class StaticVerification(BatchStage):
    """The lint gate as a batch step. ``enabled=False``: rows pass unchecked (lint_reason=not_checked)."""

    name = "verify"
    schema = VERIFIED_SCHEMA

    def __init__(self, gate: Gate, *, enabled: bool = True):
        self.gate = gate
        self.enabled = enabled
        self._fingerprint: str | None = None

    @classmethod
    def from_context(cls, ctx: Any) -> StaticVerification:
        settings = ctx.settings
        gate = make_gate(ctx.lookup, max_code_bytes=settings.lint_max_code_bytes, timeout_scale=settings.lint_timeout_scale)
        return cls(gate if settings.lint_gate else LocalGate(), enabled=settings.lint_gate)

    def fingerprint(self) -> str:
        # once per stage: it hashes the linters' configuration files, and every row's provenance names it
        if self._fingerprint is None:
            self._fingerprint = self.gate.fingerprint() if self.enabled else NOT_CHECKED
        return self._fingerprint

    def for_micro_batches(self) -> StaticVerification:
        """One linter process per micro-batch: splitting 200 rows over every core doubled the
        linters' start-ups (1.3 s of CPU a batch, against 0.8 s) while the client needs a core.
        Verdicts do not depend on how samples are batched."""
        if isinstance(self.gate, LocalGate):
            return type(self)(self.gate.with_workers(1), enabled=self.enabled)
        return self

    async def process_batch(self, rows: Sequence[Row]) -> list[Outcome]:
        """Outcomes for ``rows`` in order, from one gate call."""
        if not self.enabled:
            unchecked = ResponseVerdict(False, NOT_CHECKED).columns() | {"lint_passed": None}
            return [Passed([{**row, **unchecked, "provenance": self._provenance(row)}]) for row in rows]
        verdicts = await verify_responses(self.gate, [(row["response"], row.get("lang")) for row in rows])
        return [self._outcome(row, verdict) for row, verdict in zip(rows, verdicts, strict=True)]

    def _outcome(self, row: Row, verdict: ResponseVerdict) -> Outcome:
        if verdict.passed:
            return Passed([{**row, **verdict.columns(), "provenance": self._provenance(row)}])
        return Rejected(verdict.reason, verdict.summary(), raw_answer=row["response"], evidence=verdict.columns())

    def _provenance(self, row: Row) -> str:
        import json

        provenance = json.loads(row.get("provenance") or "{}")
        provenance[self.name] = {"gate": self.fingerprint()}
        return json.dumps(provenance, sort_keys=True)

    def shard_stats(self, rows: Sequence[Row], outcomes: Sequence[Outcome]) -> dict[str, Any]:
        """Per row language: rows in and rows the gate failed."""
        counts: dict[str, dict[str, int]] = {}
        for row, outcome in zip(rows, outcomes, strict=True):
            entry = counts.setdefault(str(row.get("lang") or "unknown"), {"in": 0, "failed": 0})
            entry["in"] += 1
            entry["failed"] += isinstance(outcome, Rejected)
        return counts

    @classmethod
    def commit_meta(cls, ctx: Any, shard_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The discard rate per language, and which gate judged, for the manifest and the log."""
        stage = cls.from_context(ctx)
        rates = discard_rates(shard_stats)
        where = lint_service_url(ctx.lookup) or "in-process"
        log.info("%s lint gate discard rate by language (paper: about 10%%)\n%s", ctx.spec.name, discard_table(rates))
        return {
            "discard_by_language": rates,
            "lint_gate": {"enabled": stage.enabled, "fingerprint": stage.fingerprint() if stage.enabled else None, "where": where},
        }


def discard_rates(shard_stats: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Summed per-language counts of every shard with the discard rate (the paper saw about 10%).
    Takes each shard's stats, or whole shard results (their ``stats``)."""
    total: dict[str, Counter[str]] = {}
    for stats in shard_stats:
        for language, counts in (stats.get("stats", stats) or {}).items():
            total.setdefault(language, Counter()).update(counts)
    return {
        language: {"in": c["in"], "failed": c["failed"], "rate": round(c["failed"] / c["in"], 4) if c["in"] else 0.0}
        for language, c in sorted(total.items())
    }


def discard_table(rates: dict[str, dict[str, float]]) -> str:
    rows: list[tuple[Any, ...]] = [("language", "in", "failed", "discard rate")]
    rows += [(language, r["in"], r["failed"], f"{r['rate']:.1%}") for language, r in rates.items()]
    return format_table(rows)


def make_gate(lookup: ConnectionLookup = env_connection, *, max_code_bytes: int = 256 * 1024, timeout_scale: float = 1.0) -> Gate:
    """The lint sidecar when its URL is configured (``lint_service`` connection or
    ``INFINISYNTH_LINT_URL``), else the linters on this worker."""
    url = lint_service_url(lookup)
    if url:
        from infinisynth.verify.client import LintServiceClient

        return LintServiceClient(url)
    return LocalGate(GateSettings(max_code_bytes=max_code_bytes, timeout_scale=timeout_scale))
