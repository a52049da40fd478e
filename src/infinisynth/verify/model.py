"""What goes into the gate and what comes out: items, findings, results, and the gate interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

# Findings the gate itself makes (not a linter): the sample could not be checked safely.
GATE_TOOL = "gate"
CODE_TOO_LARGE = "code_too_large"
BINARY_CODE = "binary_code"
EMPTY_CODE = "empty_code"  # nothing but whitespace and comments: no answer at all
NESTING_TOO_DEEP = "nesting_too_deep"  # brackets nested past what the compiler accepts (clang: 256)
LINT_TIMEOUT = "lint_timeout"
LINT_OUTPUT_LIMIT = "lint_output_limit"
LINT_MEMORY = "lint_memory"
LINT_CRASH = "lint_crash"


@dataclass(frozen=True)
class Finding:
    tool: str
    rule: str
    line: int  # 1-based line in the checked code; 0 when the finding is about the whole sample
    message: str


@dataclass(frozen=True)
class LintItem:
    id: str
    language: str  # a code from infinisynth.verify.languages.supported()
    code: str | bytes  # bytes must be UTF-8; anything else is rejected as binary


@dataclass(frozen=True)
class LintResult:
    id: str
    passed: bool
    findings: tuple[Finding, ...] = ()
    tools: tuple[tuple[str, str], ...] = field(default=())  # (tool, version) that checked the item

    @property
    def gate_reason(self) -> str | None:
        """Why the gate could not check the item (a timeout, a flood, ...), if that is why it failed."""
        return next((f.rule for f in self.findings if f.tool == GATE_TOOL), None)


class LinterUnavailable(RuntimeError):
    """A linter the gate needs is not installed: a set-up problem, never a verdict on the code."""


class Gate(Protocol):
    """Checks code samples; implemented in-process (:class:`~infinisynth.verify.gate.LocalGate`)
    and over HTTP (:class:`~infinisynth.verify.client.LintServiceClient`)."""

    async def check(self, items: Sequence[LintItem]) -> list[LintResult]:
        """One result per item, in order."""
        ...

    def fingerprint(self) -> str:
        """Changes whenever a verdict could: tool versions, rule sets, limits."""
        ...
