"""The static verification gate, in-process: many samples, few linter processes, bounded runs.

Samples are grouped by language and checked in batches (one linter process per batch, never one
per sample), with up to ``workers`` linter processes at a time. Each run is bounded in time, memory
and output (:mod:`infinisynth.verify.sandbox`). A run that fails - a hang, a flood, a crash - is
retried in halves until the sample at fault is alone; that sample fails with the reason and every
other sample still gets its verdict. Code is only ever handed to linters as files: nothing here or
in them runs or imports it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import secrets
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from infinisynth.records import content_id
from infinisynth.verify import sandbox
from infinisynth.verify.empty import is_empty
from infinisynth.verify.languages import supported
from infinisynth.verify.linters import Batch, Linter, LinterError, default_linters
from infinisynth.verify.model import (
    BINARY_CODE,
    CODE_TOO_LARGE,
    EMPTY_CODE,
    GATE_TOOL,
    LINT_CRASH,
    LINT_MEMORY,
    LINT_OUTPUT_LIMIT,
    LINT_TIMEOUT,
    Finding,
    LinterUnavailable,
    LintItem,
    LintResult,
)

_OUT_OF_MEMORY = re.compile(r"MemoryError|out of memory|OutOfMemoryError|bad_alloc|Cannot allocate memory", re.IGNORECASE)


@dataclass(frozen=True)
class GateSettings:
    workers: int = 0  # linter processes at once; 0 = the CPUs this process may use
    max_code_bytes: int = 256 * 1024  # larger samples fail unread (model answers are far smaller)
    memory_mb: int = 2048  # per linter process
    max_output_bytes: int = 4 * 1024 * 1024  # per linter run, plus max_output_per_file per file
    max_output_per_file: int = 256 * 1024
    timeout_scale: float = 1.0  # multiplies every linter's time budget
    max_findings: int = 50  # per sample; the verdict needs one
    temp_dir: str | None = None  # parent of the batch folders (default: the system's)

    def worker_count(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class _Sample:
    key: int  # index of the first item with this language and code
    language: str
    code: str


class _RunFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class LocalGate:
    """Runs the linters on this machine (see :class:`~infinisynth.verify.model.Gate`)."""

    def __init__(self, settings: GateSettings = GateSettings(), linters: Mapping[str, Sequence[Linter]] | None = None):
        self.settings = settings
        self.linters = dict(linters) if linters is not None else default_linters()
        # One semaphore per event loop: an asyncio lock belongs to the loop that first waits on it,
        # and a gate outlives loops (asyncio.run per shard, tests, the service's one loop).
        self._slots_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()

    def with_workers(self, workers: int) -> LocalGate:
        """The same gate with at most ``workers`` linter processes at once."""
        return LocalGate(replace(self.settings, workers=workers), self.linters)

    @property
    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        slots = self._slots_by_loop.get(loop)
        if slots is None:
            slots = self._slots_by_loop[loop] = asyncio.Semaphore(self.settings.worker_count())
        return slots

    def tools(self, language: str) -> tuple[tuple[str, str], ...]:
        """(tool, version) of each linter for ``language``; raises LinterUnavailable if one is missing."""
        return tuple((linter.tool, linter.version) for linter in self.linters[language])

    def fingerprint(self) -> str:
        versions = {}
        for linter in {id(x): x for group in self.linters.values() for x in group}.values():
            try:
                versions[linter.tool] = linter.version
            except LinterUnavailable:
                versions[linter.tool] = "unavailable"
        configs = sorted({str(path) for group in self.linters.values() for linter in group for path in linter.config_files()})
        digests = {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in configs}
        limits = {k: v for k, v in asdict(self.settings).items() if k in ("max_code_bytes", "max_findings")}
        return content_id("lint-gate", versions, digests, limits)

    async def check(self, items: Sequence[LintItem]) -> list[LintResult]:
        for item in items:
            if not supported(item.language) or item.language not in self.linters:
                raise ValueError(f"item {item.id!r}: the gate has no checker for language {item.language!r}")
        languages = sorted({item.language for item in items})
        tools = {language: await asyncio.to_thread(self.tools, language) for language in languages}

        findings: dict[int, list[Finding]] = {}
        samples: dict[tuple[str, str], _Sample] = {}
        first_of: list[int] = []  # item index -> the index whose verdict it shares
        for index, item in enumerate(items):
            code, problem = self._admit(item.code, item.language)
            if problem is not None:
                findings[index] = [problem]
                first_of.append(index)
                continue
            sample = samples.setdefault((item.language, code), _Sample(index, item.language, code))
            first_of.append(sample.key)

        by_language: dict[str, list[_Sample]] = {}
        for sample in samples.values():
            by_language.setdefault(sample.language, []).append(sample)
        jobs = [
            self._check_batch(linter, batch)
            for language, group in by_language.items()
            for linter in self.linters[language]
            for batch in self._batches(linter, group)
        ]
        for found in await asyncio.gather(*jobs):
            for key, items_findings in found.items():
                findings.setdefault(key, []).extend(items_findings)

        results = []
        for index, item in enumerate(items):
            found_here = sorted(findings.get(first_of[index], []), key=lambda f: (f.line, f.tool, f.rule))
            results.append(LintResult(item.id, not found_here, tuple(found_here[: self.settings.max_findings]), tools[item.language]))
        return results

    def _admit(self, code: str | bytes, language: str) -> tuple[str, Finding | None]:
        """The code as text with Unix line ends, or why it cannot be checked at all (or need not be:
        nothing but whitespace and comments fails as ``empty_code`` without a linter)."""
        if isinstance(code, bytes):
            try:
                code = code.decode("utf-8")
            except UnicodeDecodeError as exc:
                return "", Finding(GATE_TOOL, BINARY_CODE, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        if "\x00" in code:
            return "", Finding(GATE_TOOL, BINARY_CODE, 0, "contains NUL characters: binary data, not source code")
        try:
            size = len(code.encode("utf-8"))
        except UnicodeEncodeError:
            return "", Finding(GATE_TOOL, BINARY_CODE, 0, "contains unpaired surrogates: not valid text")
        if size > self.settings.max_code_bytes:
            return "", Finding(
                GATE_TOOL, CODE_TOO_LARGE, 0, f"{size} bytes of code; the gate checks at most {self.settings.max_code_bytes}"
            )
        code = code.replace("\r\n", "\n").replace("\r", "\n")
        if is_empty(code, language):
            return "", Finding(GATE_TOOL, EMPTY_CODE, 0, "no code: the sample is empty or holds only whitespace and comments")
        return code, None

    def _batches(self, linter: Linter, samples: list[_Sample]) -> list[list[_Sample]]:
        """Even batches of at most ``linter.max_batch``, and at least one per worker when possible;
        samples the linter can check together cheaply (:meth:`Linter.affinity`) are kept together."""
        if len(samples) > 1:
            keys = {sample.key: linter.affinity(sample.code, sample.language) for sample in samples}
            samples = sorted(samples, key=lambda sample: keys[sample.key])
        count = max(math.ceil(len(samples) / linter.max_batch), min(self.settings.worker_count(), len(samples)))
        size = math.ceil(len(samples) / count)
        return [samples[start : start + size] for start in range(0, len(samples), size)]

    async def _check_batch(self, linter: Linter, samples: list[_Sample]) -> dict[int, list[Finding]]:
        try:
            async with self._slots:
                found, stray = await self._run(linter, samples)
        except _RunFailed as failure:
            if len(samples) == 1:
                return {samples[0].key: [Finding(GATE_TOOL, failure.reason, 0, f"{linter.tool}: {failure.detail}")]}
            return await self._halves(linter, samples)
        if not stray:
            return found
        # Errors the linter could not place: one of the samples without findings caused them.
        if len(samples) == 1:
            return {samples[0].key: stray}
        unexplained = [s for s in samples if not found[s.key]]
        if len(unexplained) == len(samples):
            return await self._halves(linter, samples)
        if unexplained:
            found.update(await self._check_batch(linter, unexplained))
        return found

    async def _halves(self, linter: Linter, samples: list[_Sample]) -> dict[int, list[Finding]]:
        middle = len(samples) // 2
        first, second = await asyncio.gather(self._check_batch(linter, samples[:middle]), self._check_batch(linter, samples[middle:]))
        return first | second

    async def _run(self, linter: Linter, samples: list[_Sample]) -> tuple[dict[int, list[Finding]], list[Finding]]:
        """One linter run over ``samples``: findings by sample key, and those tied to no sample.

        Raises _RunFailed when the run was cut short or its output could not be read.
        """
        settings = self.settings
        token = secrets.token_hex(4)  # sample file names nobody can guess (and so import)
        with sandbox.batch_dir(settings.temp_dir) as directory:
            names, texts = [], {}
            for position, sample in enumerate(samples):
                name = f"s{position}_{token}{linter.suffix(sample.language)}"
                text = linter.prepare(sample.code, sample.language)
                (directory / name).write_text(text, encoding="utf-8")
                names.append(name)
                texts[name] = text
            kilobytes = sum(len(t) for t in texts.values()) / 1024
            limits = sandbox.Limits(
                timeout=settings.timeout_scale
                * (linter.startup_seconds + linter.seconds_per_file * len(samples) + linter.seconds_per_kb * kilobytes),
                memory_bytes=settings.memory_mb * 1024 * 1024,
                max_output=settings.max_output_bytes + settings.max_output_per_file * len(samples),
            )
            env = sandbox.base_env(directory, **linter.env(settings.memory_mb))

            async def run(argv: list[str]) -> sandbox.Completed:
                done = await sandbox.run_bounded(argv, cwd=directory, env=env, limits=limits)
                if done.failure == sandbox.TIMEOUT:
                    raise _RunFailed(LINT_TIMEOUT, f"no answer within {limits.timeout:.0f} s")
                if done.failure == sandbox.OUTPUT_LIMIT:
                    raise _RunFailed(LINT_OUTPUT_LIMIT, f"more than {limits.max_output} bytes of output")
                return done

            try:
                found = await linter.lint(Batch(directory, samples[0].language, names, texts), run)
            except (LinterError, KeyError, TypeError, ValueError, AttributeError) as exc:
                detail = str(exc) or type(exc).__name__
                raise _RunFailed(LINT_MEMORY if _OUT_OF_MEMORY.search(detail) else LINT_CRASH, detail[-500:]) from None
        # Our random file names in messages would make equal samples' findings differ between runs.
        return {
            sample.key: [_without_name(f, name) for f in found.by_file.get(name, [])] for sample, name in zip(samples, names)
        }, found.stray


def _without_name(finding: Finding, name: str) -> Finding:
    stem = name.rsplit(".", 1)[0]
    return replace(finding, message=finding.message.replace(name, "<sample>").replace(stem, "<sample>"))
