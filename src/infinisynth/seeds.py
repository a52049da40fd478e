"""Seed code: the table every pipeline run starts from.

Two sources, both producing ``SEED_SCHEMA`` rows with ``origin == "seed"``:

* ``load_magicoder`` reads a file shaped like Magicoder-OSS-Instruct-75K (Parquet or JSONL).
* ``mine_snippets`` cuts short runs of consecutive lines out of real source files, the way
  OSS-Instruct collected its seeds, and drops exact and near duplicates.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sysconfig
import textwrap
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH

from infinisynth.records import content_id, schema_with

SEED_SCHEMA = schema_with(
    pa.field("seed", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("seed_problem", pa.string()),
    pa.field("seed_solution", pa.string()),
)

EXTENSION_LANGUAGES: Mapping[str, str] = {
    ".py": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".sql": "sql",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".php": "php",
    ".sh": "shell",
    ".bash": "shell",
    ".cs": "csharp",
    ".swift": "swift",
    ".kt": "kotlin",
}

_C_STYLE_COMMENTS = ("//", "/*", "*")  # "*" also catches the middle lines of /* ... */ blocks
COMMENT_MARKERS: Mapping[str, tuple[str, ...]] = {
    "python": ("#",),
    "ruby": ("#",),
    "shell": ("#",),
    "sql": ("--", "/*", "*"),
    "php": ("#", *_C_STYLE_COMMENTS),
    **{
        lang: _C_STYLE_COMMENTS
        for lang in (
            "javascript",
            "typescript",
            "java",
            "c",
            "cpp",
            "go",
            "rust",
            "csharp",
            "swift",
            "kotlin",
        )
    },
}

SUPPORTED_SEED_FILES = (".parquet", ".jsonl", ".jsonl.gz")
REQUIRED_COLUMNS = ("seed", "lang")
_OPTIONAL_COLUMNS = ("index", "problem", "solution")

# Version control and caches hold no useful code; site-packages/dist-packages would mix
# third-party libraries into what should be the standard library.
SKIPPED_DIRS = frozenset({".git", "__pycache__", "site-packages", "dist-packages"})

_BINARY_SNIFF_BYTES = 8192
_MINIFIED_LINE_CHARS = 1000
_ATTEMPTS_PER_SNIPPET = 4  # random runs tried per wanted snippet before giving up on a file
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_MINHASH_PERMUTATIONS = 64
_NEAR_DUPLICATE_THRESHOLD = 0.8


class SeedFileError(ValueError):
    """A seed file is missing, corrupt or not shaped like Magicoder-OSS-Instruct."""


@dataclass
class SeedStats:
    """What loading or mining saw and skipped; fill one in via ``stats=`` for the task log."""

    files_scanned: int = 0
    symlinks_skipped: int = 0
    files_skipped_size: int = 0
    files_skipped_binary: int = 0
    files_skipped_encoding: int = 0
    files_skipped_minified: int = 0
    snippets_rejected_blank: int = 0
    snippets_too_large: int = 0
    snippets_duplicate: int = 0
    snippets_near_duplicate: int = 0
    rows_read: int = 0
    rows_empty_seed: int = 0
    rows_duplicate_id: int = 0


class _SeedRows:
    """Column lists that become a ``SEED_SCHEMA`` table."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in SEED_SCHEMA.names}
        self.ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.columns["id"])

    def add(self, lang: str, seed: str, source: str, problem: str | None, solution: str | None) -> bool:
        """Append a row; False (nothing appended) if its id is already present."""
        row_id = content_id("seed", lang, seed)
        if row_id in self.ids:
            return False
        self.ids.add(row_id)
        row: dict[str, Any] = {
            "id": row_id,
            "parent_ids": [],
            "origin": "seed",
            "lang": lang,
            "seed": seed,
            "source": source,
            "seed_problem": problem,
            "seed_solution": solution,
        }
        for name, value in row.items():
            self.columns[name].append(value)
        return True

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=SEED_SCHEMA)


# --- Magicoder-shaped files -------------------------------------------------------------------


def load_magicoder(
    path: str | os.PathLike[str],
    *,
    max_rows: int | None = None,
    stats: SeedStats | None = None,
) -> pa.Table:
    """Load seeds from a Magicoder-OSS-Instruct-75K-shaped ``.parquet``/``.jsonl``/``.jsonl.gz``.

    The file is streamed and reading stops once ``max_rows`` rows were kept. Rows with a blank
    seed are skipped, as are rows whose id repeats an earlier row. Raises ``SeedFileError`` naming
    the file and the problem when the file is missing, corrupt or wrongly shaped.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    stats = stats if stats is not None else SeedStats()
    path = Path(path)
    if not path.is_file():
        raise SeedFileError(f"{path}: seed file not found")
    name = path.name.lower()
    if name.endswith(".parquet"):
        read_rows = _parquet_rows
    elif name.endswith((".jsonl", ".jsonl.gz")):
        read_rows = _jsonl_rows
    else:
        raise SeedFileError(f"{path}: unsupported seed file type; supported: {', '.join(SUPPORTED_SEED_FILES)}")
    if path.stat().st_size == 0:
        raise SeedFileError(f"{path}: file is empty")

    out = _SeedRows()
    number = 0
    for number, (where, row) in enumerate(read_rows(path), start=1):
        stats.rows_read += 1
        seed = _string_cell(path, where, row, "seed")
        lang = _string_cell(path, where, row, "lang").strip().lower()
        if not seed.strip():
            stats.rows_empty_seed += 1
            continue
        index = row.get("index")
        source = f"magicoder:{index if index is not None else number}"
        problem = _optional_string_cell(path, where, row, "problem")
        solution = _optional_string_cell(path, where, row, "solution")
        if not out.add(lang, seed, source, problem, solution):
            stats.rows_duplicate_id += 1
        elif len(out) == max_rows:
            break
    if number == 0:
        raise SeedFileError(f"{path}: file contains no rows")
    if len(out) == 0:
        raise SeedFileError(f"{path}: all {number} rows have an empty seed")
    return out.table()


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("row N", row)`` for each Parquet row, reading only the columns used."""
    try:
        parquet = pq.ParquetFile(path)
        found = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise SeedFileError(f"{path}: not a valid Parquet file ({exc})") from exc
    _check_required_columns(path, "file", found)
    columns = [c for c in (*REQUIRED_COLUMNS, *_OPTIONAL_COLUMNS) if c in found]
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            for row in batch.to_pylist():
                number += 1
                yield f"row {number}", row
    except (pa.ArrowException, OSError) as exc:
        raise SeedFileError(f"{path}: corrupt Parquet data after row {number} ({exc})") from exc


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("line N", row)`` for each non-blank JSONL line, gzip-decompressing if needed."""
    number = 0
    try:
        # Binary lines, decoded one at a time, so a bad byte is reported on its own line number.
        with gzip.open(path) if path.name.lower().endswith(".gz") else path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise SeedFileError(f"{path}: line {number} is not valid UTF-8") from exc
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SeedFileError(f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno})") from exc
                if not isinstance(row, dict):
                    raise SeedFileError(f"{path}: line {number} is not a JSON object (got {type(row).__name__})")
                _check_required_columns(path, f"line {number}", row.keys())
                yield f"line {number}", row
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise SeedFileError(f"{path}: corrupt gzip data after line {number} ({exc})") from exc


def _check_required_columns(path: Path, where: str, found: Collection[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    if missing:
        raise SeedFileError(
            f"{path}: {where} is missing required column(s) {', '.join(missing)}; found columns: {', '.join(found) or '(none)'}"
        )


def _string_cell(path: Path, where: str, row: Mapping[str, Any], column: str) -> str:
    value = row[column]
    if not isinstance(value, str):
        raise SeedFileError(f"{path}: {where}: column {column!r} must be a string, got {type(value).__name__}")
    return value


def _optional_string_cell(path: Path, where: str, row: Mapping[str, Any], column: str) -> str | None:
    if row.get(column) is None:
        return None
    return _string_cell(path, where, row, column)


# --- Mining source trees ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    root: Path
    path: Path
    lang: str


def default_seed_roots() -> list[Path]:
    """Real code already on this machine: the Python standard library and global npm modules."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    try:
        npm = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        npm = None  # no npm (or it hung): the stdlib alone still makes a demo
    if npm is not None and npm.returncode == 0 and npm.stdout.strip():
        roots.append(Path(npm.stdout.strip()))
    return [root for root in dict.fromkeys(roots) if root.is_dir()]


def mine_snippets(
    roots: Sequence[str | os.PathLike[str]],
    *,
    max_snippets: int,
    min_lines: int = 5,
    max_lines: int = 15,
    max_snippet_bytes: int = 2_000,
    max_file_bytes: int = 1_000_000,
    snippets_per_file: int = 2,
    languages: Collection[str] | None = None,
    seed: int = 0,
    stats: SeedStats | None = None,
) -> pa.Table:
    """Cut up to ``max_snippets`` seed snippets out of the source files under ``roots``.

    Files are visited in a seeded random order, alternating between languages so each gets a
    balanced share; the same arguments always give the same table. Exact and near duplicates
    (MinHash LSH over token 3-shingles) are dropped.
    """
    if max_snippets < 0:
        raise ValueError(f"max_snippets must not be negative, got {max_snippets}")
    if not 1 <= min_lines <= max_lines:
        raise ValueError(f"need 1 <= min_lines <= max_lines, got {min_lines}..{max_lines}")
    if snippets_per_file < 1:
        raise ValueError(f"snippets_per_file must be at least 1, got {snippets_per_file}")
    wanted = _wanted_languages(languages)
    stats = stats if stats is not None else SeedStats()
    rng = random.Random(seed)

    by_lang: dict[str, list[_Candidate]] = {}
    for root in roots:
        for candidate in _candidate_files(Path(root), wanted, max_file_bytes, stats):
            by_lang.setdefault(candidate.lang, []).append(candidate)
    for lang in sorted(by_lang):
        rng.shuffle(by_lang[lang])

    out = _SeedRows()
    dedup = _Deduplicator(stats)
    taken = {lang: 0 for lang in by_lang}
    cursor = {lang: 0 for lang in by_lang}
    while len(out) < max_snippets and by_lang:
        # The language with the fewest snippets so far goes next, so a language with many files
        # cannot crowd out the rest.
        lang = min(by_lang, key=lambda name: (taken[name], name))
        candidate = by_lang[lang][cursor[lang]]
        cursor[lang] += 1
        if cursor[lang] == len(by_lang[lang]):
            del by_lang[lang]
        lines = _read_source_lines(candidate.path, stats)
        if lines is None:
            continue
        want = min(snippets_per_file, max_snippets - len(out))
        for first, snippet in _snippets_from_lines(lines, lang, want, min_lines, max_lines, max_snippet_bytes, rng, stats):
            if not dedup.is_new(snippet):
                continue
            last = first + snippet.count("\n")
            relative = candidate.path.relative_to(candidate.root).as_posix()
            source = f"{candidate.root.name}/{relative}:{first}-{last}"
            if out.add(lang, snippet, source, None, None):
                taken[lang] += 1
    return out.table()


def _wanted_languages(languages: Collection[str] | None) -> frozenset[str]:
    known = frozenset(EXTENSION_LANGUAGES.values())
    if languages is None:
        return known
    wanted = frozenset(lang.strip().lower() for lang in languages)
    unknown = wanted - known
    if unknown:
        raise ValueError(f"unknown language(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return wanted


def _candidate_files(root: Path, wanted: frozenset[str], max_file_bytes: int, stats: SeedStats) -> Iterator[_Candidate]:
    """Source files under ``root`` in sorted order; only names and sizes are looked at here."""
    if not root.is_dir():
        raise ValueError(f"seed root {root} is not a directory")
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError:
            continue  # unreadable directory: mine what is readable
        subdirs = []
        for entry in entries:
            if entry.is_symlink():
                stats.symlinks_skipped += 1
            elif entry.is_dir(follow_symlinks=False):
                if entry.name not in SKIPPED_DIRS:
                    subdirs.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                lang = EXTENSION_LANGUAGES.get(os.path.splitext(entry.name)[1].lower())
                if lang not in wanted:
                    continue
                if entry.stat(follow_symlinks=False).st_size > max_file_bytes:
                    stats.files_skipped_size += 1
                    continue
                yield _Candidate(root, Path(entry.path), lang)
        pending.extend(reversed(subdirs))  # depth-first, visiting subdirectories in name order


def _read_source_lines(path: Path, stats: SeedStats) -> list[str] | None:
    """The file's lines, or None (counted in ``stats``) if it is binary, not UTF-8 or minified."""
    try:
        data = path.read_bytes()
    except OSError:
        return None  # vanished or unreadable since the listing
    stats.files_scanned += 1
    if b"\0" in data[:_BINARY_SNIFF_BYTES]:
        stats.files_skipped_binary += 1
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        stats.files_skipped_encoding += 1
        return None
    # Split on newlines only: str.splitlines would also split on form feeds and other separators
    # that appear inside real source lines, throwing the line numbers off.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    if any(len(line) > _MINIFIED_LINE_CHARS for line in lines):
        stats.files_skipped_minified += 1
        return None
    return lines


def _snippets_from_lines(
    lines: list[str],
    lang: str,
    want: int,
    min_lines: int,
    max_lines: int,
    max_snippet_bytes: int,
    rng: random.Random,
    stats: SeedStats,
) -> Iterator[tuple[int, str]]:
    """Up to ``want`` non-overlapping random runs as ``(first line number, dedented text)``."""
    if len(lines) < min_lines:
        return
    markers = COMMENT_MARKERS[lang]
    used: list[tuple[int, int]] = []  # half-open line ranges already cut from this file
    found = 0
    for _ in range(want * _ATTEMPTS_PER_SNIPPET):
        if found == want:
            return
        length = rng.randint(min_lines, min(max_lines, len(lines)))
        start = rng.randrange(len(lines) - length + 1)
        end = start + length
        if any(start < used_end and used_start < end for used_start, used_end in used):
            continue
        while start < end and not lines[start].strip():
            start += 1
        while end > start and not lines[end - 1].strip():
            end -= 1
        run = lines[start:end]
        if len(run) < min_lines:
            continue
        filler = sum(1 for line in run if not line.strip() or line.lstrip().startswith(markers))
        if filler * 2 > len(run):
            stats.snippets_rejected_blank += 1
            continue
        snippet = textwrap.dedent("\n".join(run))
        if len(snippet.encode("utf-8")) > max_snippet_bytes:
            stats.snippets_too_large += 1
            continue
        used.append((start, end))
        found += 1
        yield start + 1, snippet


class _Deduplicator:
    """Remembers snippets seen so far: exact (whitespace-normalized) and near (MinHash LSH)."""

    def __init__(self, stats: SeedStats) -> None:
        self.stats = stats
        self.hashes: set[str] = set()
        self.lsh = MinHashLSH(threshold=_NEAR_DUPLICATE_THRESHOLD, num_perm=_MINHASH_PERMUTATIONS)

    def is_new(self, snippet: str) -> bool:
        """True, and remember it, unless ``snippet`` duplicates one seen before."""
        normalized = " ".join(snippet.split())
        digest = hashlib.sha256(normalized.encode("utf-8")).hexdigest()
        if digest in self.hashes:
            self.stats.snippets_duplicate += 1
            return False
        tokens = _TOKEN_RE.findall(snippet)
        shingles = {" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2))}
        minhash = MinHash(num_perm=_MINHASH_PERMUTATIONS)
        minhash.update_batch([shingle.encode("utf-8") for shingle in shingles])
        if self.lsh.query(minhash):
            self.stats.snippets_near_duplicate += 1
            return False
        self.hashes.add(digest)
        self.lsh.insert(digest, minhash)
        return True
