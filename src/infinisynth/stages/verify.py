"""Static verification: every answered problem's code must pass the lint gate, or the pair goes.

Infinite-Instruct's Mechanism 3: a prompt-response pair whose code has an error-level static
finding is discarded - no repair, no execution. This stage makes no model calls, so it does not go
through the LLM runner: a whole shard is checked in one gate call (few linter processes for many
rows), and the shard's output and rejected files are written like any other stage's so
:func:`infinisynth.shards.commit_stage` publishes it with its funnel.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from infinisynth.records import REJECTED_SCHEMA
from infinisynth.runner import Outcome, Passed, Rejected, rejected_row
from infinisynth.settings import ConnectionLookup, env_connection, lint_service_url
from infinisynth.shards import ShardResult, commit_stage
from infinisynth.stages.respond import RESPONSE_SCHEMA
from infinisynth.storage import Store
from infinisynth.verify.gate import GateSettings, LocalGate
from infinisynth.verify.model import Gate
from infinisynth.verify.responses import VERDICT_FIELDS, ResponseVerdict, verify_responses

log = logging.getLogger(__name__)

VERIFIED_SCHEMA = pa.schema([*RESPONSE_SCHEMA, *VERDICT_FIELDS])
NOT_CHECKED = "not_checked"
# Key of a shard result that carries per-language counts to the commit (not a ShardResult field).
BY_LANGUAGE = "lint_by_language"


@dataclass(frozen=True)
class VerifySettings:
    enabled: bool = True  # off: rows pass unchecked, marked lint_reason=not_checked


class StaticVerification:
    name = "verify"
    schema = VERIFIED_SCHEMA

    def __init__(self, gate: Gate, settings: VerifySettings = VerifySettings()):
        self.gate = gate
        self.settings = settings

    def cache_key(self, row: dict[str, Any]) -> str:
        return self.gate.fingerprint() if self.settings.enabled else NOT_CHECKED

    async def process(self, row: dict[str, Any]) -> Outcome:
        (outcome,) = await self.process_many([row])
        return outcome

    async def process_many(self, rows: Sequence[dict[str, Any]]) -> list[Outcome]:
        """Outcomes for ``rows`` in order, from one gate call."""
        if not self.settings.enabled:
            unchecked = ResponseVerdict(False, NOT_CHECKED).columns() | {"lint_passed": None}
            return [Passed([{**row, **unchecked, "provenance": self._provenance(row)}]) for row in rows]
        verdicts = await verify_responses(self.gate, [(row["response"], row.get("lang")) for row in rows])
        return [self._outcome(row, verdict) for row, verdict in zip(rows, verdicts, strict=True)]

    def _outcome(self, row: dict[str, Any], verdict: ResponseVerdict) -> Outcome:
        if verdict.passed:
            return Passed([{**row, **verdict.columns(), "provenance": self._provenance(row)}])
        return Rejected(verdict.reason, verdict.summary(), raw_answer=row["response"], evidence=verdict.columns())

    def _provenance(self, row: dict[str, Any]) -> str:
        provenance = json.loads(row.get("provenance") or "{}")
        provenance[self.name] = {"gate": self.cache_key(row)}
        return json.dumps(provenance, sort_keys=True)


def run_verify_shard(
    store: Store, pipeline: str, ds: str, shard: int, rows: Sequence[dict[str, Any]], stage: StaticVerification
) -> dict[str, Any]:
    """Check one shard and write its (uncommitted) output and rejected files.

    Returns the :class:`ShardResult` as a dict plus per-language counts under ``BY_LANGUAGE``.
    """
    outcomes = asyncio.run(stage.process_many(rows))
    outputs, rejects = [], []
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, Rejected):
            rejects.append(rejected_row(stage.name, row, outcome))
        else:
            outputs.extend(outcome.rows)
    output_file = store.partition(pipeline, stage.name, ds).write_table(
        shard, pa.Table.from_pylist(outputs, schema=stage.schema), stage.schema
    )
    rejected_file = store.rejected(pipeline, stage.name, ds).write_table(
        shard, pa.Table.from_pylist(rejects, schema=REJECTED_SCHEMA), REJECTED_SCHEMA
    )
    by_reason = Counter(r["reason"] for r in rejects)
    result = ShardResult(
        shard=shard, rows_in=len(rows), output=output_file.to_dict(), rejected=rejected_file.to_dict(), rejected_by_reason=dict(by_reason)
    )
    by_language = language_counts(rows, outcomes)
    log.info(
        "%s.%s shard %d: %d in, %d passed, %d rejected %s",
        pipeline,
        stage.name,
        shard,
        len(rows),
        len(outputs),
        len(rejects),
        dict(by_reason),
    )
    return {**result.to_dict(), BY_LANGUAGE: by_language}


def language_counts(rows: Sequence[dict[str, Any]], outcomes: Sequence[Outcome]) -> dict[str, dict[str, int]]:
    """Per row language: rows in and rows the gate failed."""
    counts: dict[str, dict[str, int]] = {}
    for row, outcome in zip(rows, outcomes, strict=True):
        entry = counts.setdefault(str(row.get("lang") or "unknown"), {"in": 0, "failed": 0})
        entry["in"] += 1
        entry["failed"] += isinstance(outcome, Rejected)
    return counts


def discard_rates(shard_results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Summed per-language counts of every shard with the discard rate (the paper saw about 10%)."""
    total: dict[str, Counter[str]] = {}
    for result in shard_results:
        for language, counts in (result.get(BY_LANGUAGE) or {}).items():
            total.setdefault(language, Counter()).update(counts)
    return {
        language: {"in": c["in"], "failed": c["failed"], "rate": round(c["failed"] / c["in"], 4) if c["in"] else 0.0}
        for language, c in sorted(total.items())
    }


def discard_table(rates: dict[str, dict[str, float]]) -> str:
    from infinisynth.llm.usage import format_table

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


def commit_verified(
    store: Store,
    pipeline: str,
    ds: str,
    shard_results: Sequence[dict[str, Any]],
    gate: Gate,
    *,
    enabled: bool = True,
    where: str = "in-process",
) -> dict[str, Any]:
    """Publish the gate's shards with the discard rate per language in the manifest and the log."""
    rates = discard_rates(shard_results)
    meta = {
        "discard_by_language": rates,
        "lint_gate": {"enabled": enabled, "fingerprint": gate.fingerprint() if enabled else None, "where": where},
    }
    results = [{k: v for k, v in r.items() if k != BY_LANGUAGE} for r in shard_results]
    funnel = commit_stage(store, pipeline, StaticVerification.name, ds, VERIFIED_SCHEMA, results, meta=meta)
    log.info("%s lint gate discard rate by language (paper: about 10%%)\n%s", pipeline, discard_table(rates))
    return funnel
