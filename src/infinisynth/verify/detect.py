"""The language of an untagged code block, from the code itself.

A block is taken to be in a language when that language's tree-sitter grammar parses it without an
error; the row's own language is tried first, then common languages in a fixed order. Program
output and prose rarely parse cleanly as code and have none of ``(){}[];=``, so they come back as
None and are not checked. Parsing runs in a bounded child process (grammars are C code, the input
is hostile); a block whose detection still fails alone is reported as a gate failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Sequence

from infinisynth.verify import sandbox
from infinisynth.verify.languages import grammar, tree_sitter_languages
from infinisynth.verify.linters import HERE
from infinisynth.verify.model import GATE_TOOL, LINT_CRASH, LINT_OUTPUT_LIMIT, LINT_TIMEOUT, Finding

# Tried after the row's language, in this order. Grammars that accept almost any text (bash,
# PHP's HTML mode, Ruby's) are left out: output would pass for them.
DETECTABLE = ("python", "javascript", "typescript", "java", "c", "cpp", "go", "rust", "csharp", "kotlin", "swift", "sql")
_GRAMMARS = {"jsx": "javascript", "tsx": "tsx"}
_CODE_SIGNS = re.compile(r"[(){}\[\];=]")


def _grammar(language: str) -> str:
    return _GRAMMARS.get(language) or grammar(language)


def _detectable(language: str) -> bool:
    return language in DETECTABLE or language in _GRAMMARS or language in tree_sitter_languages()


async def detect_languages(
    blocks: Sequence[tuple[str, str | None]], *, timeout: float = 60.0, memory_mb: int = 1024, temp_dir: str | None = None
) -> list[str | Finding | None]:
    """For each ``(code, preferred language)``: the language, None for text, or a gate Finding."""
    results: list[str | Finding | None] = [None] * len(blocks)
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, (code, preferred) in enumerate(blocks):
        if not _CODE_SIGNS.search(code):
            continue
        known = [language for language in (preferred, *DETECTABLE) if language and _detectable(language)]
        groups.setdefault(tuple(dict.fromkeys(known)), []).append(index)
    limits = sandbox.Limits(timeout=timeout, memory_bytes=memory_mb * 1024 * 1024, max_output=1024 * 1024)
    jobs = [_detect(candidates, [(i, blocks[i][0]) for i in indexes], limits, temp_dir) for candidates, indexes in groups.items()]
    detected = await asyncio.gather(*jobs)
    for found in detected:
        for index, language in found.items():
            results[index] = language
    return results


async def _detect(
    candidates: tuple[str, ...], blocks: list[tuple[int, str]], limits: sandbox.Limits, temp_dir: str | None
) -> dict[int, str | Finding | None]:
    by_grammar: dict[str, str] = {}
    for language in candidates:
        by_grammar.setdefault(_grammar(language), language)
    with sandbox.batch_dir(temp_dir) as directory:
        names = []
        for position, (_, code) in enumerate(blocks):
            names.append(f"b{position}.src")
            (directory / names[-1]).write_text(code, encoding="utf-8")
        argv = [sys.executable, "-I", str(HERE / "run_treesitter.py"), "detect", ",".join(by_grammar), *names]
        done = await sandbox.run_bounded(argv, cwd=directory, env=sandbox.base_env(directory), limits=limits)
    try:
        if done.failure or done.returncode != 0:
            raise ValueError(done.failure or f"exit {done.returncode}: {done.stderr_tail()}")
        records = [json.loads(line) for line in done.stdout.splitlines()]
        grammars = [record["grammar"] for record in records]
        if len(grammars) != len(blocks):
            raise ValueError(f"{len(grammars)} answers for {len(blocks)} blocks")
    except (ValueError, KeyError, TypeError) as exc:
        if len(blocks) > 1:
            middle = len(blocks) // 2
            halves = [_detect(candidates, part, limits, temp_dir) for part in (blocks[:middle], blocks[middle:])]
            first, second = await asyncio.gather(*halves)
            return first | second
        reason = {sandbox.TIMEOUT: LINT_TIMEOUT, sandbox.OUTPUT_LIMIT: LINT_OUTPUT_LIMIT}.get(done.failure or "", LINT_CRASH)
        return {blocks[0][0]: Finding(GATE_TOOL, reason, 0, f"tree-sitter language detection failed: {exc}")}
    return {index: by_grammar.get(found) if found else None for (index, _), found in zip(blocks, grammars)}
