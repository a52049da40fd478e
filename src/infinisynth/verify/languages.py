"""Which language a markdown fence names, and which languages the gate can check.

Languages use the pipeline's codes (:mod:`infinisynth.languages`: ``python``, ``cpp``, ``shell``, ...)
plus ``jsx`` and ``tsx``, which ESLint parses differently from plain JavaScript and TypeScript. Any
other language tree-sitter has a grammar for is checked for syntax under the grammar's name.
"""

from __future__ import annotations

import re
import typing
from functools import cache

# Languages with a real linter (see infinisynth.verify.linters); the rest get tree-sitter.
LINTED = frozenset({"python", "javascript", "jsx", "typescript", "tsx", "java", "c", "cpp", "sql"})

# Fence tags that are not the language's own code name.
ALIASES = {
    "py": "python",
    "python3": "python",
    "py3": "python",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
    "mjs": "javascript",
    "cjs": "javascript",
    "es6": "javascript",
    "ecmascript": "javascript",
    "ts": "typescript",
    "mts": "typescript",
    "cts": "typescript",
    "h": "c",
    "c++": "cpp",
    "cxx": "cpp",
    "cc": "cpp",
    "hpp": "cpp",
    "hxx": "cpp",
    "hh": "cpp",
    "mysql": "sql",
    "postgresql": "sql",
    "postgres": "sql",
    "psql": "sql",
    "pgsql": "sql",
    "plpgsql": "sql",
    "sqlite": "sql",
    "sqlite3": "sql",
    "tsql": "sql",
    "mssql": "sql",
    "plsql": "sql",
    "mariadb": "sql",
    "golang": "go",
    "rs": "rust",
    "rb": "ruby",
    "bash": "shell",
    "sh": "shell",
    "zsh": "shell",
    "shellscript": "shell",
    "cs": "csharp",
    "c#": "csharp",
    "kt": "kotlin",
    "kts": "kotlin",
    "hs": "haskell",
    "pl": "perl",
    "ex": "elixir",
    "exs": "elixir",
    "jl": "julia",
    "yml": "yaml",
    "objective-c": "objc",
    "objectivec": "objc",
    "makefile": "make",
    "docker": "dockerfile",
    "ps1": "powershell",
    "pwsh": "powershell",
    "tf": "terraform",
    "f#": "fsharp",
    "clj": "clojure",
    "erl": "erlang",
    "ml": "ocaml",
}

# Fence tags for text that is not code: program output, terminal sessions, prose, patches.
TEXT_TAGS = frozenset(
    {
        "text",
        "txt",
        "plain",
        "plaintext",
        "output",
        "out",
        "stdout",
        "result",
        "console",
        "terminal",
        "shell-session",
        "sh-session",
        "pycon",
        "log",
        "diff",
        "patch",
        "markdown",
        "md",
        "none",
        "nohighlight",
    }
)

# Grammar names where they differ from the pipeline's language code.
_GRAMMARS = {"shell": "bash"}

# Grammars that are not a language someone would answer a programming problem in.
_NOT_LANGUAGES = frozenset({"comment", "test", "query", "markdown", "markdown_inline", "printf", "luap", "luadoc", "jsdoc", "doxygen"})

_TAG_WORD = re.compile(r"[a-z0-9_+#.-]{1,32}")


@cache
def tree_sitter_languages() -> frozenset[str]:
    """Languages checked by tree-sitter alone: every grammar in the pinned pack, by pipeline code."""
    from tree_sitter_language_pack import SupportedLanguage

    codes = {"shell" if g == "bash" else g for g in typing.get_args(SupportedLanguage)}
    return frozenset(codes - LINTED - _NOT_LANGUAGES - {"tsx"})


def supported(language: str) -> bool:
    return language in LINTED or language in tree_sitter_languages()


def grammar(language: str) -> str:
    """The tree-sitter grammar for a language code."""
    return _GRAMMARS.get(language, language)


def language_of_tag(info: str) -> str | None:
    """The language a fence's info string names: a code from :func:`supported`, ``"text"`` for
    output and prose, or None when it names nothing known (the block's language is then detected).

    Only the first word counts (```` ```python title="../x.py" ```` is Python); pandoc's
    ``{.python}`` form is accepted. The word is never used as a file name.
    """
    word = _TAG_WORD.match(info.strip().lower().lstrip("{").lstrip("."))
    if word is None:
        return None
    tag = word.group(0)
    if tag in TEXT_TAGS:
        return "text"
    language = ALIASES.get(tag, tag)
    return language if supported(language) else None
