"""Take away a sample's means to steer the linter that checks it, in the copy that is linted.

Configuration files cannot reach a linter (explicit configs, our own folder and file names), but
some linters obey comments in the code itself. Each function here returns the code with those
directives made inert while keeping every line where it was, so findings keep their line numbers.
ESLint needs nothing here: ``--no-inline-config`` and ``noInlineConfig`` switch its directives off.
"""

from __future__ import annotations

import io
import re
import tokenize

# Used only when the code cannot be tokenized (then pylint fails on it anyway): cuts every line
# at a '#' that precedes "pylint". That may also cut a string, which can only add errors.
_PYLINT_LINE = re.compile(r"#[^\n]*pylint[^\n]*", re.IGNORECASE)


def python_comments(code: str) -> str:
    """Blank every comment: ``# pylint: disable=...``, ``skip-file`` and coding cookies go with them.

    Uses the tokenizer pylint itself uses to find its pragmas, so every comment pylint would read
    is found here.
    """
    lines = io.StringIO(code).readlines()
    try:
        comments = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, SyntaxError):
        return _PYLINT_LINE.sub("#", code)
    for token in comments:
        row, start = token.start
        line = lines[row - 1]
        lines[row - 1] = line[:start] + "#" + line[token.end[1] :]
    return "".join(lines)


# clang-tidy: NOLINT, NOLINTNEXTLINE, NOLINTBEGIN/END.
_NOLINT = re.compile(r"NOLINT")
# `#pragma clang diagnostic ignored "-W..."` (or GCC's, or the `_Pragma("...")` form, even built
# by a macro) could turn our -Werror= flags off. An unknown pragma is merely ignored.
_DIAGNOSTIC_PRAGMA = re.compile(r"\b(clang|GCC)([\s\\]+)diagnostic\b")
# An include directive (also spelled with the %: digraph, or with a comment after the '#').
_INCLUDE = re.compile(r"((?:#|%:)(?:[ \t]|/\*.*?\*/)*(?:include_next|include|import|embed)\b)(.*)$", re.MULTILINE)
_LITERAL_TARGET = re.compile(r'[ \t]*(<[^>\n]*>|"[^"\n]*")')
BLOCKED_INCLUDE = '"gate-blocked-include.h"'


def c_directives(code: str) -> str:
    """Make NOLINT markers and diagnostic pragmas inert, and point every include that could leave
    the system include folders (absolute paths, ``..``, macro-computed names) at a header that
    does not exist, so a host file's text never reaches a message.

    Text in strings may change too; that cannot hide an error.
    """
    code = _NOLINT.sub("NOLNT_", code)
    code = _DIAGNOSTIC_PRAGMA.sub(r"\1\2gate_removed", code)
    return _INCLUDE.sub(_safe_include, code)


def _safe_include(match: re.Match[str]) -> str:
    directive, rest = match.groups()
    target = _LITERAL_TARGET.match(rest)
    if target:
        path = target.group(1)[1:-1]
        if not (path.startswith("/") or "\\" in path or ".." in path.split("/")):
            return match.group(0)
    return f"{directive} {BLOCKED_INCLUDE}"


def sqlfluff_inline_config(code: str) -> str:
    """Indent ``-- sqlfluff:...`` lines, which could otherwise switch the templater (and with it
    Python imports from any folder), the dialect or the rules.

    SQLFluff looks for them at the start of ``str.splitlines()`` lines, so this splits the same way.
    """
    return "".join(" " + line if line.startswith(("--sqlfluff", "-- sqlfluff")) else line for line in code.splitlines(keepends=True))
