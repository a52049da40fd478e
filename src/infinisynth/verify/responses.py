"""Verdicts on whole markdown responses: every code block must pass, and there must be code.

Blocks come from a CommonMark parser (markdown-it), so fences inside lists, longer fences and
tilde fences are found the way a renderer finds them. A block's language is its fence tag, else it
is detected from the code (:mod:`infinisynth.verify.detect`); blocks tagged as output or text, and
untagged blocks no grammar parses cleanly, are not code and are not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from markdown_it import MarkdownIt

from infinisynth.verify.detect import detect_languages
from infinisynth.verify.empty import is_empty
from infinisynth.verify.languages import language_of_tag
from infinisynth.verify.model import GATE_TOOL, Finding, Gate, LintItem, LintResult

PASSED = "ok"
NO_CODE = "no_code"
LINT_ERROR = "lint_error"
TOO_MANY_BLOCKS = "too_many_blocks"
MAX_BLOCKS = 32

TOOL_TYPE = pa.struct([pa.field("tool", pa.string()), pa.field("version", pa.string())])
FINDING_TYPE = pa.struct(
    [
        pa.field("block", pa.int32()),  # which code block of the response (0-based, in order)
        pa.field("tool", pa.string()),
        pa.field("rule", pa.string()),
        pa.field("line", pa.int32()),  # line within the block
        pa.field("message", pa.string()),
    ]
)
# The verdict columns a verified row carries (and the verdict table's, after ``id``).
VERDICT_FIELDS = [
    pa.field("lint_passed", pa.bool_()),  # null when the gate was switched off for the run
    pa.field("lint_reason", pa.string(), nullable=False),  # ok, no_code, lint_error, lint_timeout, not_checked, ...
    pa.field("lint_languages", pa.list_(pa.string())),  # language of each checked block, in order
    pa.field("lint_tools", pa.list_(TOOL_TYPE)),
    pa.field("lint_findings", pa.list_(FINDING_TYPE)),
]
VERDICT_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), *VERDICT_FIELDS])

_MARKDOWN = MarkdownIt("commonmark")


@dataclass(frozen=True)
class ResponseVerdict:
    passed: bool
    reason: str
    languages: tuple[str, ...] = ()
    findings: tuple[tuple[int, Finding], ...] = ()  # (block, finding)
    tools: tuple[tuple[str, str], ...] = ()

    def columns(self) -> dict[str, Any]:
        """The values of :data:`VERDICT_FIELDS`."""
        return {
            "lint_passed": self.passed,
            "lint_reason": self.reason,
            "lint_languages": list(self.languages),
            "lint_tools": [{"tool": t, "version": v} for t, v in self.tools],
            "lint_findings": [{"block": b, "tool": f.tool, "rule": f.rule, "line": f.line, "message": f.message} for b, f in self.findings],
        }

    def summary(self, limit: int = 5) -> str:
        """One line for people: the first findings, e.g. ``block 0 line 3: pylint undefined-variable: ...``."""
        if not self.findings:
            return {NO_CODE: "the response contains no code block", PASSED: "all code blocks pass"}.get(self.reason, self.reason)
        shown = [f"block {b} line {f.line}: {f.tool} {f.rule}: {f.message}" for b, f in self.findings[:limit]]
        more = len(self.findings) - limit
        return "; ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def code_blocks(markdown: str) -> list[tuple[str | None, str]]:
    """Each fenced or indented block of ``markdown``, in order: (language from its tag, code).

    The language is a supported code, ``"text"``, or None when the tag is missing or unknown.
    """
    blocks = []
    for token in _MARKDOWN.parse(markdown):
        if token.type == "fence":
            blocks.append((language_of_tag(token.info), token.content))
        elif token.type == "code_block":
            blocks.append((None, token.content))
    return blocks


async def verify_responses(
    gate: Gate, responses: Sequence[tuple[str, str | None]], *, max_blocks: int = MAX_BLOCKS, temp_dir: str | None = None
) -> list[ResponseVerdict]:
    """A verdict per ``(markdown, the row's language)``, all checked in one gate call (and a second
    for blocks that use names an earlier block defines)."""
    extracted = [code_blocks(markdown)[: max_blocks + 1] for markdown, _ in responses]
    untagged = [
        (r, b) for r, blocks in enumerate(extracted) for b, (language, code) in enumerate(blocks) if language is None and code.strip()
    ]
    detected = await detect_languages([(extracted[r][b][1], responses[r][1]) for r, b in untagged], temp_dir=temp_dir)
    languages: dict[tuple[int, int], str | Finding | None] = dict(zip(untagged, detected))

    items: list[LintItem] = []
    failures: dict[tuple[int, int], Finding] = {}
    for r, blocks in enumerate(extracted):
        for b, (tag, code) in enumerate(blocks):
            language = languages.get((r, b), tag)
            if isinstance(language, Finding):
                failures[(r, b)] = language
            elif language not in (None, "text") and (tag is not None or not is_empty(code, language)):
                # A fence that names a language claims code: empty or comments only, it fails as
                # empty_code. An untagged block of comments only is prose, like one nothing parses.
                items.append(LintItem(f"{r}:{b}", language, code))
    results = dict(zip([item.id for item in items], await gate.check(items)))
    language_of = {item.id: item.language for item in items}
    results.update(await _with_earlier_blocks(gate, items, results))

    verdicts = []
    for r, blocks in enumerate(extracted):
        if len(blocks) > max_blocks:
            too_many = Finding(GATE_TOOL, TOO_MANY_BLOCKS, 0, f"more than {max_blocks} code blocks")
            verdicts.append(ResponseVerdict(False, TOO_MANY_BLOCKS, findings=((max_blocks, too_many),)))
            continue
        checked = [(b, f"{r}:{b}") for b in range(len(blocks)) if f"{r}:{b}" in results]
        findings = [(b, finding) for (fr, b), finding in sorted(failures.items()) if fr == r]
        findings += [(b, f) for b, key in checked for f in results[key].findings]
        findings.sort(key=lambda bf: bf[0])
        if not checked and not findings:
            verdicts.append(ResponseVerdict(False, NO_CODE))
            continue
        tools = tuple(dict.fromkeys(t for _, key in checked for t in results[key].tools))
        checked_languages = tuple(language_of[key] for _, key in checked)
        verdicts.append(ResponseVerdict(not findings, _reason(findings), checked_languages, tuple(findings), tools))
    return verdicts


# Findings that only say a name is not defined; an earlier block of the same response may define it.
UNDEFINED_NAME = frozenset({("pylint", "undefined-variable"), ("eslint", "no-undef")})


async def _with_earlier_blocks(gate: Gate, items: list[LintItem], results: dict[str, LintResult]) -> dict[str, LintResult]:
    """Re-check blocks whose only findings are undefined names with the response's earlier blocks
    of the same language in front (a usage example calling the solution's function); a finding
    goes when the name is defined there. Whatever else the joined text draws (a redefinition, say)
    is an artefact of joining, not a finding on the block.
    """
    earlier: dict[str, list[LintItem]] = {}
    retries: list[tuple[LintItem, int]] = []  # (block with context, lines of context)
    for item in items:
        response = item.id.split(":")[0]
        before = [e for e in earlier.get(response, []) if e.language == item.language]
        found = results[item.id].findings
        if before and found and all((f.tool, f.rule) in UNDEFINED_NAME for f in found):
            context = "".join(str(e.code).rstrip("\n") + "\n" for e in before)
            retries.append((LintItem(item.id, item.language, context + str(item.code)), context.count("\n")))
        earlier.setdefault(response, []).append(item)
    if not retries:
        return {}
    rechecked = await gate.check([item for item, _ in retries])
    updated = {}
    for (item, offset), again in zip(retries, rechecked, strict=True):
        still = {(f.tool, f.rule, f.line - offset, f.message) for f in again.findings}
        original = results[item.id]
        left = tuple(f for f in original.findings if (f.tool, f.rule, f.line, f.message) in still)
        updated[item.id] = replace(original, passed=not left, findings=left)
    return updated


def _reason(findings: list[tuple[int, Finding]]) -> str:
    """ok; lint_error when a linter found something; else why the gate could not check a block."""
    if not findings:
        return PASSED
    if any(f.tool != GATE_TOOL for _, f in findings):
        return LINT_ERROR
    return findings[0][1].rule
