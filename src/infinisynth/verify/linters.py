"""The linters behind the gate: how each runs over a folder of samples and how its output is read.

Every linter gets its configuration explicitly from ``include/lint/`` (the rule sets and their
reasons are in ``docs/LINT_GATE.md``), runs in a fresh folder holding only files we named, and
reports findings per file name. A linter only says what it found; :mod:`infinisynth.verify.gate`
decides batching, limits and what happens when a run fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import weakref
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from infinisynth.prompts import PROJECT_ROOT
from infinisynth.verify import neutralize
from infinisynth.verify.languages import grammar, tree_sitter_languages
from infinisynth.verify.model import EMPTY_CODE, GATE_TOOL, NESTING_TOO_DEEP, Finding, LinterUnavailable
from infinisynth.verify.sandbox import Completed

CONFIG_DIR = PROJECT_ROOT / "include" / "lint"
ESLINT_DIR = PROJECT_ROOT / "tools" / "eslint"
HERE = Path(__file__).resolve().parent
MAX_MESSAGE_CHARS = 300

# Runs one command in the batch folder under the gate's limits; raises if the run was cut short.
Runner = Callable[..., Awaitable[Completed]]


@dataclass
class Batch:
    directory: Path
    language: str
    names: list[str]  # our file names inside ``directory``, one per sample
    texts: dict[str, str]  # name -> the text written (after :meth:`Linter.prepare`)


@dataclass
class BatchFindings:
    by_file: dict[str, list[Finding]]
    stray: list[Finding] = field(default_factory=list)  # errors not tied to one of the batch's files


class LinterError(Exception):
    """The linter's output could not be read: it crashed, or its output is not what it should be."""


class Linter:
    tool: str
    languages: frozenset[str]
    max_batch: int = 200
    # Time a batch may take: startup + per file + per KB of code (scaled by the gate's settings).
    startup_seconds: float = 15.0
    seconds_per_file: float = 0.2
    seconds_per_kb: float = 0.05

    def suffix(self, language: str) -> str:
        raise NotImplementedError

    def prepare(self, code: str, language: str) -> str:
        """The text to lint: the sample with whatever could steer this linter made inert."""
        return code

    def env(self, memory_mb: int) -> dict[str, str]:
        """Extra environment for the linter process."""
        return {}

    def config_files(self) -> tuple[Path, ...]:
        return ()

    def affinity(self, code: str, language: str) -> str:
        """Samples with equal affinity are batched together when they can be (cheaper to check together)."""
        return ""

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        raise NotImplementedError

    @cached_property
    def version(self) -> str:
        """The tool's version; raises :class:`LinterUnavailable` when it is not installed."""
        return self._probe_version()

    def _probe_version(self) -> str:
        raise NotImplementedError


def _metadata_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise LinterUnavailable(f"{distribution} is not installed: run `make setup`") from None


# The Debian package behind each command the gate runs (scripts/system-deps.sh installs them).
DEBIAN_PACKAGES = {
    "checkstyle": "checkstyle",
    "clang-tidy": "clang-tidy",
    "java": "default-jdk-headless",
    "javac": "default-jdk-headless",
    "node": "nodejs npm",
}


def _command_version(argv: list[str], pattern: str) -> str:
    if shutil.which(argv[0]) is None:
        package = DEBIAN_PACKAGES.get(argv[0], argv[0])
        raise LinterUnavailable(
            f"{argv[0]} is not installed: run `make setup` (scripts/system-deps.sh) or `sudo apt-get install {package}`"
        )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    found = re.search(pattern, done.stdout + done.stderr)
    if found is None:
        raise LinterUnavailable(f"cannot read the version of {argv[0]}: {(done.stdout + done.stderr)[-200:]!r}")
    return found.group(1)


def _message(text: str) -> str:
    return " ".join(text.split())[:MAX_MESSAGE_CHARS]


def _json(stdout: bytes, tool: str) -> Any:
    try:
        return json.loads(stdout)
    except ValueError as exc:
        raise LinterError(f"{tool} printed no JSON ({exc})") from None


def _json_lines(stdout: bytes, tool: str) -> list[dict[str, Any]]:
    return [_json(line, tool) for line in stdout.splitlines() if line.strip()]


def _all_reported(names: list[str], reported: dict[str, list[Finding]], tool: str) -> dict[str, list[Finding]]:
    missing = set(names) - reported.keys()
    if missing:
        raise LinterError(f"{tool} did not report on {len(missing)} of {len(names)} files")
    return {name: reported[name] for name in names}


# -- Python -------------------------------------------------------------------------------------


class Pylint(Linter):
    tool = "pylint"
    languages = frozenset({"python"})
    # Start-up (about 0.4 s of CPU) and parsing the standard library modules samples import are paid
    # once per process: few, large batches (2,000 samples on 2 cores: 2 processes, not 4).
    max_batch = 1000
    seconds_per_kb = 0.1

    def suffix(self, language: str) -> str:
        return ".py"

    def prepare(self, code: str, language: str) -> str:
        return neutralize.python_comments(code)

    def config_files(self) -> tuple[Path, ...]:
        return (CONFIG_DIR / "pylintrc", HERE / "run_pylint.py")

    def _probe_version(self) -> str:
        return f"{_metadata_version('pylint')} (astroid {_metadata_version('astroid')})"

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        done = await run(
            [sys.executable, "-I", str(HERE / "run_pylint.py"), f"--rcfile={CONFIG_DIR / 'pylintrc'}", "--output-format=json", *batch.names]
        )
        if done.returncode is None or done.returncode < 0 or done.returncode & 32:
            raise LinterError(f"pylint exited with {done.returncode}: {done.stderr_tail()}")
        found: dict[str, list[Finding]] = {name: [] for name in batch.names}
        for message in _json(done.stdout, self.tool):
            # `from . import x` in a snippet names the package it came from, which we do not have.
            if message["symbol"] == "no-name-in-module" and message["message"].endswith("in module ''"):
                continue
            found[message["path"]].append(Finding(self.tool, message["symbol"], int(message["line"]), _message(message["message"])))
        return BatchFindings(found)


# -- JavaScript and TypeScript ------------------------------------------------------------------


class ESLint(Linter):
    tool = "eslint"
    languages = frozenset({"javascript", "jsx", "typescript", "tsx"})
    max_batch = 500  # Node, ESLint and the TypeScript parser take about 0.5 s to start
    _SUFFIXES = {"javascript": ".js", "jsx": ".jsx", "typescript": ".ts", "tsx": ".tsx"}

    def suffix(self, language: str) -> str:
        return self._SUFFIXES[language]

    def config_files(self) -> tuple[Path, ...]:
        return (CONFIG_DIR / "eslint.config.mjs", CONFIG_DIR / "eslint-formatter.cjs", ESLINT_DIR / "package-lock.json")

    def _package_version(self, package: str) -> str:
        try:
            return json.loads((ESLINT_DIR / "node_modules" / package / "package.json").read_text())["version"]
        except FileNotFoundError:
            raise LinterUnavailable(
                f"{package} is not installed in {ESLINT_DIR}: run `make setup` or `npm ci --prefix tools/eslint`"
            ) from None

    def _probe_version(self) -> str:
        if shutil.which("node") is None:
            raise LinterUnavailable("node is not installed: run `make setup` (scripts/system-deps.sh) or `sudo apt-get install nodejs npm`")
        return f"{self._package_version('eslint')} (typescript-eslint {self._package_version('typescript-eslint')})"

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        done = await run(
            [
                "node",
                str(ESLINT_DIR / "node_modules" / "eslint" / "bin" / "eslint.js"),
                "--config",
                str(CONFIG_DIR / "eslint.config.mjs"),
                "--no-inline-config",
                "--no-warn-ignored",
                "--format",
                str(CONFIG_DIR / "eslint-formatter.cjs"),
                *batch.names,
            ]
        )
        if done.returncode not in (0, 1):  # 2: configuration error or crash
            raise LinterError(f"eslint exited with {done.returncode}: {done.stderr_tail()}")
        found: dict[str, list[Finding]] = {}
        for result in _json(done.stdout, self.tool):
            found[Path(result["filePath"]).name] = [
                Finding(self.tool, message.get("ruleId") or "parse-error", int(message.get("line") or 0), _message(message["message"]))
                for message in result["messages"]
                if message.get("severity") == 2
            ]
        return BatchFindings(_all_reported(batch.names, found, self.tool))

    def env(self, memory_mb: int) -> dict[str, str]:
        # V8's heap stops short of the process limit, so a flood ends in a clean heap error.
        return {"NODE_OPTIONS": f"--max-old-space-size={memory_mb * 3 // 4}"}


# -- Java ---------------------------------------------------------------------------------------


def _jvm_env(memory_mb: int) -> dict[str, str]:
    # Read by the `java` launcher, also behind Debian's checkstyle wrapper. Quick start-up matters
    # more than peak speed for batches this size; no hsperfdata files in /tmp.
    flags = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-Xshare:auto", f"-Xmx{memory_mb // 2}m"]
    return {"JDK_JAVA_OPTIONS": " ".join(flags)}


class Checkstyle(Linter):
    """Bug patterns in Java that compiles (see checkstyle.xml). Syntax is javac's call: Checkstyle
    8.36's grammar ends at Java 14, so its parse failures are not findings."""

    tool = "checkstyle"
    languages = frozenset({"java"})
    max_batch = 100

    def suffix(self, language: str) -> str:
        return ".java"

    def config_files(self) -> tuple[Path, ...]:
        return (CONFIG_DIR / "checkstyle.xml",)

    def env(self, memory_mb: int) -> dict[str, str]:
        return _jvm_env(memory_mb)

    def _probe_version(self) -> str:
        return _command_version(["checkstyle", "--version"], r"Checkstyle version: (\S+)")

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        done = await run(["checkstyle", "-c", str(CONFIG_DIR / "checkstyle.xml"), "-f", "xml", *batch.names])
        try:
            root = ElementTree.fromstring(done.stdout)
        except ElementTree.ParseError as exc:
            raise LinterError(f"checkstyle printed no report ({exc}): {done.stderr_tail()}") from None
        found: dict[str, list[Finding]] = {}
        for file in root.iter("file"):
            findings = found.setdefault(Path(file.get("name", "")).name, [])
            for error in file.iter("error"):
                source = error.get("source", "")
                if source.endswith(".Checker"):  # it could not parse the file: javac decides
                    continue
                rule = source.rsplit(".", 1)[-1].removesuffix("Check")
                findings.append(Finding(self.tool, rule, int(error.get("line", 0)), _message(error.get("message", ""))))
        return BatchFindings(_all_reported(batch.names, found, self.tool))


class Javac(Linter):
    """What the Java compiler rejects, each file compiled on its own (JavacBatch.java)."""

    tool = "javac"
    languages = frozenset({"java"})
    max_batch = 100
    _NAMING = "compiler.err.class.public.should.be.in.file"  # our file names are not the class's
    _MISSING_PACKAGE = "compiler.err.doesnt.exist"

    def suffix(self, language: str) -> str:
        return ".java"

    def config_files(self) -> tuple[Path, ...]:
        return (HERE / "JavacBatch.java",)

    def _probe_version(self) -> str:
        _command_version(["java", "-version"], r"version \"?(\S+?)\"?\s")
        return _command_version(["javac", "-version"], r"javac (\S+)")

    def env(self, memory_mb: int) -> dict[str, str]:
        return _jvm_env(memory_mb)

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        done = await run(["java", str(HERE / "JavacBatch.java"), *batch.names])
        if done.returncode != 0:
            raise LinterError(f"javac exited with {done.returncode}: {done.stderr_tail()}")
        found = {str(record["file"]): self._findings(record["errors"]) for record in _json_lines(done.stdout, self.tool)}
        return BatchFindings(_all_reported(batch.names, found, self.tool))

    def _findings(self, errors: list[dict[str, Any]]) -> list[Finding]:
        errors = [e for e in errors if e["code"] != self._NAMING]
        # A sample that imports a library the JDK lacks cannot have its names resolved; what the
        # library would define is indistinguishable from a typo, so only unresolved names go.
        if any(e["code"] == self._MISSING_PACKAGE for e in errors):
            errors = [
                e for e in errors if e["code"] != self._MISSING_PACKAGE and not str(e["code"]).startswith("compiler.err.cant.resolve")
            ]
        return [Finding(self.tool, str(e["code"]), int(e["line"]), _message(str(e["message"]))) for e in errors]


# -- C and C++ ----------------------------------------------------------------------------------

# Folders whose headers' text may appear in messages; anything else a sample pulls in does not.
_SYSTEM_HEADERS = ("/usr/include/", "/usr/lib/gcc/", "/usr/lib/llvm-", "/usr/local/include/")


class ClangTidy(Linter):
    """Compiler errors and the bug checks of ``clang-tidy.yaml``, every file its own translation unit.

    Two things make it fast without changing a verdict (``fast=False`` is the plain way, kept as the
    benchmark's reference):

    - **A precompiled header per include block.** A C++ sample's leading ``#include <...>`` lines
      cost most of its compile (``<vector>`` and ``<numeric>``: about 0.1 s of CPU, every sample
      again). Samples of a batch that start with the same system includes get them from one
      precompiled header, built once by the clang of the same installation with the same flags and
      kept for the gate's lifetime: a translation unit then starts in the very state those lines
      would have left it in, and the sample's own ``#include`` lines find their headers already
      included (their include guards end them). Anything else in front (a macro, a quoted include)
      ends the block; a header that fails to precompile, or a header the compiler refuses, means
      the plain way for those samples.
    - **AST-matcher checks only where they can match.** The four ``bugprone-*`` checks walk the
      whole AST, headers included (with a precompiled header, that means reading all of it back).
      Each can only fire on code the sample spells: ``std::move`` (use-after-move), a constructor
      of a class it defines (undelegated-constructor), a ``string_view``/``span`` handle
      (dangling-handle), ``memset``/``memcpy``/``memmove`` (undefined-memory-manipulation). A
      sample without any of those words (and without ``##`` token pasting, after line splicing)
      is checked without them; the compiler errors and the analyzer checks always run.
    """

    tool = "clang-tidy"
    languages = frozenset({"c", "cpp"})
    max_batch = 25  # each file costs a compile; smaller batches make a failure cheaper to isolate
    startup_seconds = 10.0
    seconds_per_file = 3.0
    seconds_per_kb = 0.2
    # GCC's defaults (GNU dialects) with a newer C++; C99 rejects what C89 allowed implicitly.
    _FLAGS = {
        "c": ["-std=gnu17", "-Werror=implicit-function-declaration", "-Werror=implicit-int", "-ferror-limit=20"],
        "cpp": ["-std=gnu++20", "-ferror-limit=20"],
    }
    _FIXES = "diagnostics.yaml"
    _MAX_REPORT_BYTES = 64 * 1024 * 1024
    # Words without which no enabled bugprone check can match (see the class docstring).
    _MATCHER_WORDS = re.compile(r"move|forward|class|struct|union|view|sv|span|mem|##")
    _WITHOUT_MATCHERS = "--checks=-bugprone-*"  # appended to the config's Checks
    # A leading system include: `#include <name>` (a safe relative name), nothing else on the line.
    _LEADING_INCLUDE = re.compile(r"[ \t]*#[ \t]*include[ \t]*<([A-Za-z0-9_+-][A-Za-z0-9_./+-]*)>[ \t]*(?://[^\n]*)?")
    _PCH_REFUSED = re.compile(r"precompiled header|PCH file|AST file", re.IGNORECASE)
    _MAX_PCH_BYTES = 1024 * 1024 * 1024  # all precompiled headers of one gate

    def __init__(self, *, fast: bool = True):
        self.fast = fast
        self._pch_dir: Path | None = None
        self._pch: dict[str, Path | None] = {}  # include block -> its precompiled header (None: not possible)
        self._pch_bytes = 0
        self._pch_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()

    def suffix(self, language: str) -> str:
        return ".c" if language == "c" else ".cpp"

    def prepare(self, code: str, language: str) -> str:
        return neutralize.c_directives(code)

    def config_files(self) -> tuple[Path, ...]:
        return (CONFIG_DIR / "clang-tidy.yaml",)

    def _probe_version(self) -> str:
        return _command_version(["clang-tidy", "--version"], r"LLVM version (\S+)")

    def affinity(self, code: str, language: str) -> str:
        return self._include_block(self.prepare(code, language)) if self.fast and language == "cpp" else ""

    @classmethod
    def _include_block(cls, text: str) -> str:
        """The leading ``#include <...>`` lines (blank and ``//`` lines between them allowed), as the
        text of a header holding just them; empty when the sample starts otherwise."""
        names = []
        for line in text.split("\n"):
            stripped = line.strip()
            if not stripped or (stripped.startswith("//") and not stripped.endswith("\\")):
                continue
            found = cls._LEADING_INCLUDE.fullmatch(line)
            if found is None or line.endswith("\\") or ".." in found.group(1).split("/"):
                break
            names.append(found.group(1))
        return "".join(f"#include <{name}>\n" for name in names)

    @classmethod
    def _needs_matchers(cls, text: str, language: str) -> bool:
        return language != "cpp" or cls._MATCHER_WORDS.search(text.replace("\\\n", "")) is not None

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        if not self.fast:
            plain = await self._lint_group(batch, batch.names, [], run)
            assert plain is not None
            return plain
        blocks = {name: self._include_block(batch.texts[name]) if batch.language == "cpp" else "" for name in batch.names}
        sharing: dict[str, int] = {}
        for block in blocks.values():
            sharing[block] = sharing.get(block, 0) + 1
        # Samples that share a precompiled header run together; all others in one plain run.
        pch_of: dict[str, Path | None] = {}
        for block, count in sharing.items():
            if block and (count > 1 or block in self._pch):
                pch_of[block] = await self._precompiled(block, batch, run)
        groups: dict[tuple[Path | None, bool], list[str]] = {}
        for name in batch.names:
            key = (pch_of.get(blocks[name]), self._needs_matchers(batch.texts[name], batch.language))
            groups.setdefault(key, []).append(name)
        result = BatchFindings({})
        for (pch, matchers), names in groups.items():
            extra = [] if matchers else [self._WITHOUT_MATCHERS]
            found = await self._lint_group(batch, names, extra, run, pch)
            if found is None:  # the compiler refused the header: never again, and the plain way now
                self._pch[blocks[names[0]]] = None
                found = await self._lint_group(batch, names, extra, run)
            assert found is not None
            result.by_file.update(found.by_file)
            result.stray.extend(found.stray)
        return result

    async def _lint_group(
        self, batch: Batch, names: list[str], extra: list[str], run: Runner, pch: Path | None = None
    ) -> BatchFindings | None:
        """One clang-tidy run over ``names``; None when it refused the precompiled header."""
        fixes = f"diagnostics-{batch.names.index(names[0])}.yaml"
        # The structured report, not the console: that echoes source lines, which a sample controls.
        done = await run(
            [
                "clang-tidy",
                f"--config-file={CONFIG_DIR / 'clang-tidy.yaml'}",
                *extra,
                "--quiet",
                f"--export-fixes={fixes}",
                *names,
                "--",
                *self._FLAGS[batch.language],
                *(["-include-pch", str(pch)] if pch is not None else []),
            ]
        )
        report = batch.directory / fixes
        if done.returncode is None or done.returncode < 0:
            raise LinterError(f"clang-tidy was killed ({done.returncode}): {done.stderr_tail()}")
        if not report.exists():
            if done.returncode != 0:
                if pch is not None and self._PCH_REFUSED.search(done.stderr_tail(4000)):
                    return None
                raise LinterError(f"clang-tidy failed without a report: {done.stderr_tail()}")
            return BatchFindings({name: [] for name in names})
        if report.stat().st_size > self._MAX_REPORT_BYTES:
            raise LinterError("clang-tidy's report is too large")
        try:
            diagnostics = (yaml.load(report.read_bytes(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get(
                "Diagnostics"
            ) or []
        except yaml.YAMLError as exc:
            raise LinterError(f"clang-tidy's report is not YAML ({exc})") from None
        if pch is not None and any(self._PCH_REFUSED.search(str(d.get("DiagnosticMessage", {}).get("Message", ""))) for d in diagnostics):
            return None
        return self._attribute(batch, names, diagnostics)

    async def _precompiled(self, block: str, batch: Batch, run: Runner) -> Path | None:
        """The precompiled header of ``block`` (built on first use, kept beside the batch folders
        for the linter's lifetime), or None when there cannot be one."""
        language = batch.language
        loop = asyncio.get_running_loop()
        lock = self._pch_locks.setdefault(loop, {}).setdefault(block, asyncio.Lock())
        async with lock:
            if block in self._pch:
                return self._pch[block]
            self._pch[block] = None
            clang = self._clang()
            if clang is None or self._pch_bytes > self._MAX_PCH_BYTES:
                return None
            if self._pch_dir is None:
                self._pch_dir = Path(tempfile.mkdtemp(prefix="lint-pch-", dir=batch.directory.parent))  # private (0700), ours alone
                weakref.finalize(self, shutil.rmtree, str(self._pch_dir), True)
            stem = hashlib.sha256(f"{language}\0{block}".encode()).hexdigest()[:24]
            header, output = self._pch_dir / f"{stem}.h", self._pch_dir / f"{stem}.pch"
            header.write_text(block, encoding="utf-8")
            done = await run([clang, "-x", "c++-header", *self._FLAGS[language], str(header), "-o", str(output)])
            if done.failure is None and done.returncode == 0 and output.exists():
                self._pch[block] = output
                self._pch_bytes += output.stat().st_size
            else:
                output.unlink(missing_ok=True)
            return self._pch[block]

    @staticmethod
    def _clang() -> str | None:
        """The clang of clang-tidy's own installation (the same version reads its headers), if any."""
        tidy = shutil.which("clang-tidy")
        if tidy is None:
            return None
        clang = Path(tidy).resolve().parent / "clang"
        return str(clang) if clang.exists() else None

    def _attribute(self, batch: Batch, names: list[str], diagnostics: list[dict[str, Any]]) -> BatchFindings:
        result = BatchFindings({name: [] for name in names})
        directory = batch.directory.resolve()

        def ours(place: dict[str, Any]) -> str | None:
            path = Path(str(place.get("FilePath", "")))
            return path.name if path.parent == directory and path.name in result.by_file else None

        for diagnostic in diagnostics:
            name = str(diagnostic["DiagnosticName"])
            if diagnostic.get("Level") != "Error" and name.startswith("clang-diagnostic-"):
                continue  # a plain compiler warning; every check we enable counts as an error
            main = diagnostic["DiagnosticMessage"]
            message = str(main.get("Message", ""))
            where = str(main.get("FilePath", ""))
            if ours(main) is None:
                header = Path(where).name or "an included file"
                message = f"in {header}: {message}" if where.startswith(_SYSTEM_HEADERS) else f"error in {header}, outside the sample"
            # An error inside a header belongs to the sample whose code one of its notes points at.
            place = next((p for p in [main, *(diagnostic.get("Notes") or [])] if ours(p)), None)
            if place is None:
                result.stray.append(Finding(self.tool, name, 0, _message(message)))
                continue
            file = str(ours(place))
            line = batch.texts[file].encode("utf-8")[: int(place.get("FileOffset", 0))].count(b"\n") + 1
            if message.startswith("bracket nesting level exceeded"):
                # clang's own limit (-fbracket-depth, 256), not a fault of the language: say so.
                result.by_file[file].append(Finding(GATE_TOOL, NESTING_TOO_DEEP, line, _message(f"{self.tool}: {message}")))
                continue
            result.by_file[file].append(Finding(self.tool, name, line, _message(message)))
        return result


# -- SQL ----------------------------------------------------------------------------------------


class SQLFluff(Linter):
    """Parse errors only. SQL has many dialects and a fence rarely says which: a statement passes if
    one of several common dialects parses it; otherwise the first dialect's errors are reported."""

    tool = "sqlfluff"
    languages = frozenset({"sql"})
    max_batch = 100
    # One process tries every dialect on what the earlier ones could not parse: up to six passes.
    seconds_per_file = 1.0
    seconds_per_kb = 3.0
    DIALECTS = ("ansi", "postgres", "mysql", "sqlite", "tsql", "bigquery")

    def suffix(self, language: str) -> str:
        return ".sql"

    def prepare(self, code: str, language: str) -> str:
        return neutralize.sqlfluff_inline_config(code)

    def config_files(self) -> tuple[Path, ...]:
        return (CONFIG_DIR / "sqlfluff.cfg", HERE / "run_sqlfluff.py")

    def _probe_version(self) -> str:
        # SQLFluff parses with its Rust parser when `sqlfluffrs` is installed (`use_rust_parser = auto`,
        # its default), about six times faster; which one judged is part of the verdict's provenance.
        version = _metadata_version("sqlfluff")
        try:
            return f"{version} (rust parser {importlib.metadata.version('sqlfluffrs')})"
        except importlib.metadata.PackageNotFoundError:
            return f"{version} (python parser)"

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        """Every dialect in one process (``run_sqlfluff.py``): each lints what no earlier one parsed."""
        config = str(CONFIG_DIR / "sqlfluff.cfg")
        done = await run([sys.executable, "-I", str(HERE / "run_sqlfluff.py"), config, ",".join(self.DIALECTS), *batch.names])
        if done.returncode != 0:
            raise LinterError(f"sqlfluff exited with {done.returncode}: {done.stderr_tail()}")
        lines = _json_lines(done.stdout, self.tool)
        first: dict[str, list[Finding]] | None = None
        remaining = list(batch.names)
        for dialect, line in zip(self.DIALECTS, lines):
            if line.get("dialect") != dialect or not remaining:
                raise LinterError(f"sqlfluff reported on dialect {line.get('dialect')!r} out of turn")
            found = self._findings(dialect, line["records"], remaining)
            first = found if first is None else first
            remaining = [name for name in remaining if found[name]]
        if first is None or len(lines) > len(self.DIALECTS) or (remaining and len(lines) < len(self.DIALECTS)):
            raise LinterError(f"sqlfluff stopped before every dialect was tried: {done.stderr_tail()}")
        return BatchFindings({name: first[name] if name in remaining else [] for name in batch.names})

    def _findings(self, dialect: str, records: list[dict[str, Any]], names: list[str]) -> dict[str, list[Finding]]:
        found = {
            Path(result["filepath"]).name: [
                Finding(self.tool, v["code"], int(v.get("start_line_no") or 0), _message(f"{dialect}: {v['description']}"))
                for v in result["violations"]
            ]
            for result in records
        }
        return _all_reported(names, found, self.tool)


# -- everything else: syntax from a tree-sitter grammar -----------------------------------------


class TreeSitter(Linter):
    tool = "tree-sitter"
    max_batch = 500
    startup_seconds = 10.0
    seconds_per_file = 0.05
    seconds_per_kb = 0.02

    @cached_property
    def languages(self) -> frozenset[str]:  # type: ignore[override]
        return tree_sitter_languages()

    def suffix(self, language: str) -> str:
        return ".src"

    def prepare(self, code: str, language: str) -> str:
        # The PHP grammar reads text outside <?php ... ?> as HTML; open PHP mode on the first line.
        if language == "php" and "<?php" not in code and "<?=" not in code:
            return "<?php " + code
        return code

    def config_files(self) -> tuple[Path, ...]:
        return (HERE / "run_treesitter.py",)

    def _probe_version(self) -> str:
        return f"{_metadata_version('tree-sitter')} (tree-sitter-language-pack {_metadata_version('tree-sitter-language-pack')})"

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        done = await run([sys.executable, "-I", str(HERE / "run_treesitter.py"), "check", grammar(batch.language), *batch.names])
        if done.returncode != 0:
            raise LinterError(f"tree-sitter exited with {done.returncode}: {done.stderr_tail()}")
        found = {
            str(record["file"]): [
                # A tree of comments only is no code: the gate's verdict, as for the linted languages.
                Finding(GATE_TOOL if rule == EMPTY_CODE else self.tool, str(rule), int(line), _message(str(message)))
                for line, rule, message in record["findings"]
            ]
            for record in _json_lines(done.stdout, self.tool)
        }
        return BatchFindings(_all_reported(batch.names, found, self.tool))


def default_linters() -> dict[str, list[Linter]]:
    """Language -> the linters that check it (Java has two: Checkstyle and javac)."""
    linters: list[Linter] = [Pylint(), ESLint(), Checkstyle(), Javac(), ClangTidy(), SQLFluff(), TreeSitter()]
    by_language: dict[str, list[Linter]] = {}
    for linter in linters:
        for language in linter.languages:
            by_language.setdefault(language, []).append(linter)
    return by_language
