"""Dynamic verification: run each answer's tests against its solution in the sandbox (the test gate).

The step after the lint gate and test writing: the generator wrote tests for each lint-clean
answer in a stage of its own (``tests`` column, see :mod:`infinisynth.stages.write_tests`); here a whole shard's solutions run with their tests in one
call to the bubblewrap sandbox (:mod:`infinisynth.verify.execute`: one sandbox, one process and one
set of limits per row), in-process or in the lint sidecar (``POST /v1/execute``) when the
``lint_service`` connection is set. The ``test_gate`` Param decides what a verdict does:

- ``off``: nothing runs; rows pass with no verdict (``test_verdict`` null).
- ``report``: every row passes with its verdict in ``test_verdict``/``test_detail``.
- ``enforce``: rows whose tests ``failed``, raised an ``error``, hit a ``timeout`` or were
  ``killed`` go to ``rejected/execute`` with reason ``tests_<verdict>``, the detail (the first
  failing assertion) and the verdict as evidence; ``passed`` and ``unverified`` rows pass.

A row is ``unverified`` (and passes) when its language has no runner or it has no tests. Without
a working sandbox the step fails (:class:`~infinisynth.errors.InputError`, not retried): code is
never run outside it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

import pyarrow as pa

from infinisynth.errors import InputError
from infinisynth.llm.usage import format_table
from infinisynth.settings import ConnectionLookup, env_connection, lint_service_url
from infinisynth.stages.base import BatchStage, Outcome, Passed, Rejected, Row
from infinisynth.stages.write_tests import TESTED_SCHEMA, solution_code
from infinisynth.verify.execute import ERROR, FAILED, KILLED, PASSED, TIMEOUT, ExecItem, ExecLimits, ExecResult

log = logging.getLogger(__name__)

UNVERIFIED = "unverified"
FAILING = (FAILED, ERROR, TIMEOUT, KILLED)
MODES = ("off", "report", "enforce")
TEST_FIELDS = [
    pa.field("test_verdict", pa.string()),  # passed, failed, error, timeout, killed, unverified; null: gate off
    pa.field("test_detail", pa.string()),  # the first failing assertion, the exception, the limit hit, why unverified
    pa.field("test_seconds", pa.float64()),  # wall time of the sandboxed run
]
EXECUTED_SCHEMA = pa.schema([*TESTED_SCHEMA, *TEST_FIELDS])


class Runner(Protocol):
    """What runs solutions with their tests: the local :class:`~infinisynth.verify.execute.Sandbox`
    or the sidecar's client, both behind the same two calls."""

    def languages(self) -> frozenset[str]: ...

    async def execute(self, items: Sequence[ExecItem]) -> list[ExecResult]: ...

    def describe(self) -> dict[str, Any]: ...


class LocalRunner:
    def __init__(self, limits: ExecLimits | None = None, slots: int | None = None):
        from infinisynth.verify.execute import Sandbox, SandboxUnavailable

        try:
            self.sandbox = Sandbox(limits or ExecLimits(), slots=slots or len(os.sched_getaffinity(0)))
        except SandboxUnavailable as exc:
            raise InputError(f"the test gate cannot run: {exc}") from exc

    def languages(self) -> frozenset[str]:
        return self.sandbox.languages()

    async def execute(self, items: Sequence[ExecItem]) -> list[ExecResult]:
        return await self.sandbox.run(items)

    def describe(self) -> dict[str, Any]:
        return {"where": "in-process", "bubblewrap": self.sandbox.version, "limits": asdict(self.sandbox.limits)}


class ServiceRunner:
    def __init__(self, url: str):
        from infinisynth.verify.client import LintServiceClient

        self.client = LintServiceClient(url)
        self.url = url
        sandbox = self.client.health().get("sandbox") or {}
        if not sandbox.get("available"):
            raise InputError(
                f"the test gate cannot run: the lint service at {url} has no sandbox "
                f"({sandbox.get('error', 'it does not offer /v1/execute')}); code is never run unsandboxed"
            )
        self.info = sandbox

    def languages(self) -> frozenset[str]:
        return frozenset(self.info.get("languages", ["python"]))

    async def execute(self, items: Sequence[ExecItem]) -> list[ExecResult]:
        return await self.client.execute(items)

    def describe(self) -> dict[str, Any]:
        return {"where": self.url, "bubblewrap": self.info.get("bubblewrap"), "limits": self.info.get("limits")}


def make_runner(lookup: ConnectionLookup = env_connection) -> Runner:
    """The sidecar's sandbox when its URL is configured (as for the lint gate), else one here."""
    url = lint_service_url(lookup)
    return ServiceRunner(url) if url else LocalRunner()


class DynamicVerification(BatchStage):
    """The test gate as a batch step (see the module's doc)."""

    name = "execute"
    schema = EXECUTED_SCHEMA

    def __init__(self, runner: Runner | None, mode: str = "report"):
        if mode not in MODES:
            raise InputError(f"test_gate must be one of {', '.join(MODES)}, not {mode!r}")
        if mode != "off" and runner is None:
            raise InputError(f"test_gate={mode} needs a sandbox to run the tests in")
        self.runner = runner
        self.mode = mode

    @classmethod
    def from_context(cls, ctx: Any) -> DynamicVerification:
        mode = ctx.settings.test_gate
        return cls(make_runner(ctx.lookup) if mode != "off" else None, mode)

    def fingerprint(self) -> str:
        if self.runner is None:
            return "off"
        return json.dumps({"mode": self.mode, **self.runner.describe()}, sort_keys=True, default=str)

    async def process_batch(self, rows: Sequence[Row]) -> list[Outcome]:
        if self.runner is None:
            return [Passed([{**row, "test_verdict": None, "test_detail": None, "test_seconds": None}]) for row in rows]
        languages = self.runner.languages()
        items: list[ExecItem] = []
        results: dict[int, ExecResult] = {}
        for index, row in enumerate(rows):
            lang, tests = str(row.get("lang") or ""), row.get("tests") or ""
            solution = solution_code(row.get("response") or "", lang)
            if lang not in languages:
                results[index] = ExecResult(str(index), UNVERIFIED, f"no sandboxed runner for {lang or 'an unknown language'}", 0.0)
            elif not tests.strip():
                results[index] = ExecResult(str(index), UNVERIFIED, "the answer came without tests", 0.0)
            elif not solution.strip():
                results[index] = ExecResult(str(index), UNVERIFIED, f"no {lang} code block in the response", 0.0)
            else:
                items.append(ExecItem(str(index), lang, solution, tests))
        for result in await self.runner.execute(items) if items else []:
            results[int(result.id)] = result
        return [self._outcome(row, results[index]) for index, row in enumerate(rows)]

    def _outcome(self, row: Row, result: ExecResult) -> Outcome:
        columns = {"test_verdict": result.verdict, "test_detail": result.detail, "test_seconds": result.seconds}
        if self.mode == "enforce" and result.verdict in FAILING:
            evidence = {**columns, "tests": row.get("tests")}
            return Rejected(f"tests_{result.verdict}", result.detail, raw_answer=row.get("response"), evidence=evidence)
        provenance = json.loads(row.get("provenance") or "{}")
        provenance[self.name] = {"test_gate": self.mode}
        return Passed([{**row, **columns, "provenance": json.dumps(provenance, sort_keys=True)}])

    def shard_stats(self, rows: Sequence[Row], outcomes: Sequence[Outcome]) -> dict[str, Any]:
        """Per row language: rows in and how many got each verdict."""
        counts: dict[str, Counter[str]] = {}
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, Passed):
                verdict = outcome.rows[0].get("test_verdict") or "not_checked"
            else:
                verdict = (outcome.evidence or {}).get("test_verdict", outcome.reason)
            entry = counts.setdefault(str(row.get("lang") or "unknown"), Counter())
            entry["in"] += 1
            entry[verdict] += 1
        return {language: dict(c) for language, c in counts.items()}

    @classmethod
    def commit_meta(cls, ctx: Any, shard_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The test pass rate per language, and how the gate ran, for the manifest and the log."""
        rates = pass_rates(shard_stats)
        mode = ctx.settings.test_gate
        where = (lint_service_url(ctx.lookup) or "in-process") if mode != "off" else None
        if mode != "off":
            log.info("%s test gate (%s) pass rate by language\n%s", ctx.spec.name, mode, pass_table(rates))
        return {"test_pass_by_language": rates, "test_gate": {"mode": mode, "where": where}}


def pass_rates(shard_stats: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Summed per-language verdict counts of every shard, with the pass rate among the rows whose
    tests ran (``run`` = in - unverified - not checked). Takes shard stats or whole shard results."""
    total: dict[str, Counter[str]] = {}
    for stats in shard_stats:
        for language, counts in (stats.get("stats", stats) or {}).items():
            total.setdefault(language, Counter()).update(counts)
    rates = {}
    for language, c in sorted(total.items()):
        run = sum(c[v] for v in (PASSED, *FAILING))
        rates[language] = {
            "in": c["in"],
            "run": run,
            **{v: c[v] for v in (PASSED, *FAILING, UNVERIFIED)},
            "rate": round(c[PASSED] / run, 4) if run else None,
        }
    return rates


def pass_table(rates: dict[str, dict[str, Any]]) -> str:
    rows: list[tuple[Any, ...]] = [("language", "in", "run", "passed", "failed", "error", "timeout", "killed", "unverified", "pass rate")]
    for language, r in rates.items():
        rate = "-" if r["rate"] is None else f"{r['rate']:.1%}"
        rows.append((language, r["in"], r["run"], r[PASSED], r[FAILED], r[ERROR], r[TIMEOUT], r[KILLED], r[UNVERIFIED], rate))
    return format_table(rows)
