"""Is there any code at all? Empty text, whitespace and comments are not an answer.

Linters accept an empty file (PyLint, ESLint, javac, SQLFluff have nothing to complain about), so
a fence holding nothing, or only a comment such as ``# TODO``, would pass the gate. The gate fails
such a sample as ``empty_code`` before any linter sees it. This module decides lexically for the
languages the gate lints (and those that share their comment syntax); for the other languages
tree-sitter decides from the parse tree (``run_treesitter.py``: a tree of comments only).

The scan only ever skips whitespace and comments from the start; the first other character ends
it. So strings, operators and unterminated comments need no lexer: text this scan cannot read as
comments is left to the linter, which reports what is wrong with it.
"""

from __future__ import annotations

import io
import tokenize

# Comment syntax by language: (line comment starters, (block open, block close) pairs).
_C_STYLE = (("//",), (("/*", "*/"),))
_COMMENTS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    **dict.fromkeys(
        (
            "javascript",
            "jsx",
            "typescript",
            "tsx",
            "java",
            "c",
            "cpp",
            "csharp",
            "go",
            "rust",
            "kotlin",
            "swift",
            "scala",
            "dart",
            "objc",
            "zig",
        ),
        _C_STYLE,
    ),
    "sql": (("--",), (("/*", "*/"),)),
    "shell": (("#",), ()),
    "ruby": (("#",), ()),
    "perl": (("#",), ()),
    "r": (("#",), ()),
    "yaml": (("#",), ()),
    "toml": (("#",), ()),
    "lua": (("--",), ()),
    "php": (("//", "#"), (("/*", "*/"),)),
}
# A first line `#!...` is a comment to the shell and to Node (and TypeScript, which keeps it).
_HASHBANG = frozenset({"javascript", "jsx", "typescript", "tsx", "shell", "ruby", "perl", "php", "r", "lua"})
_PYTHON_NOTHING = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER})


def knows(language: str) -> bool:
    """True when :func:`is_empty` can tell comments from code in ``language`` (else only whitespace)."""
    return language == "python" or language in _COMMENTS


def is_empty(code: str, language: str) -> bool:
    """True when ``code`` holds no code: nothing, whitespace, or (where known) comments only."""
    if not code.strip():
        return True
    if language == "python":
        return _python_is_empty(code)
    syntax = _COMMENTS.get(language)
    if syntax is None:
        return False
    text = code.lstrip()
    if language in _HASHBANG and text.startswith("#!"):
        text = text.partition("\n")[2]
    return _only_comments(text, *syntax)


def _python_is_empty(code: str) -> bool:
    try:
        return all(token.type in _PYTHON_NOTHING for token in tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):  # not even tokens: PyLint will say what is wrong
        return False


def _only_comments(text: str, line_starts: tuple[str, ...], blocks: tuple[tuple[str, str], ...]) -> bool:
    position, end = 0, len(text)
    while position < end:
        if text[position].isspace():
            position += 1
            continue
        if text.startswith(line_starts, position):
            newline = text.find("\n", position)
            position = end if newline < 0 else newline + 1
            continue
        block = next((pair for pair in blocks if text.startswith(pair[0], position)), None)
        if block is None:
            return False  # code (or something the linter must judge)
        close = text.find(block[1], position + len(block[0]))
        if close < 0:
            return False  # an unterminated comment is a syntax error: the linter reports it
        position = close + len(block[1])
    return True
