"""Seed code: the table every pipeline run starts from, a different one for every date.

Two sources, both producing ``SEED_SCHEMA`` rows with ``origin == "seed"``:

* a file shaped like Magicoder-OSS-Instruct-75K (Parquet or JSONL): ``sample_magicoder`` takes a
  date's rows, ``load_magicoder`` reads the file in its own order;
* source trees: ``mine_snippets`` cuts short runs of consecutive lines out of real files, the way
  OSS-Instruct collected its seeds, and drops exact and near duplicates.

**Each date has its own seeds.** A source is a corpus in a stable order (a hash of ``seed``, the
mining seed, and each item's identity), and a date takes a window of it: window ``n`` is the date's
day number counted from ``SEED_EPOCH`` (:func:`date_window`), so consecutive dates take consecutive,
disjoint windows and a re-run of a date takes the same one. A Magicoder file's corpus is its
distinct non-blank rows (in the wanted languages), and window ``n`` is positions ``n*size`` up to
``(n+1)*size`` modulo the corpus size. A source tree's corpus is its files: each language's files
are split into blocks of about twice the files the date needs from that language (files vary in
what they yield), window ``n`` takes the ``n``-th block, and each file's runs are cut by a random
generator seeded by the file, not the date. When a window reaches past the end of the corpus it
wraps around, and the log says so with a warning: a Magicoder window starts again at the first
rows; mined blocks start a new lap, in a new order with new cuts, so the same files give mostly
new snippets. Windows are disjoint for a fixed corpus and fixed settings: adding files or changing
``max_seeds`` moves the window boundaries.

:func:`screen_seeds` keeps what may reach a prompt: a seed (or a seed problem) larger than the
size bound, or any text holding a control character other than tab and newline (NUL ...), is
rejected with its reason. Line endings are normalized to ``\\n`` first.

A seed file or tree that cannot be used (missing, corrupt, wrongly shaped, nothing in the wanted
languages, an unknown language) raises :class:`~infinisynth.errors.InputError` naming the input and
the problem; :class:`SeedFileError` is the seed file's kind of it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import random
import re
import subprocess
import sysconfig
import textwrap
import zlib
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from infinisynth.errors import InputError
from infinisynth.records import content_id, schema_with
from infinisynth.stages.base import Rejected, Row, rejected_row

log = logging.getLogger(__name__)

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

SEED_EPOCH = date(2026, 1, 1)  # window 0: the DAGs' start date; every later day takes the next window
MINED_SNIPPET_BYTES = 2_000  # mined runs are cut at most this large (a Magicoder seed may be larger)

# Why a seed row is rejected (the reason codes of the seeds step's rejected table).
SEED_TOO_LARGE = "seed_too_large"
CONTROL_CHARACTERS = "control_characters"
# Every text column that reaches a prompt or the published tables, and whether the size bound applies.
_SCREENED_COLUMNS = (("seed", True), ("seed_problem", True), ("seed_solution", False))
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0, DEL and C1, less tab and newline

_BINARY_SNIFF_BYTES = 8192
_MINIFIED_LINE_CHARS = 1000
_ATTEMPTS_PER_SNIPPET = 4  # random runs tried per wanted snippet before giving up on a file
# A mined block holds this many times the files a language's share needs at snippets_per_file
# each: real files give ~85% of that on average (stdlib, npm), some none at all.
_FILES_PER_WANTED_SNIPPET = 2
_MINHASH_PERMUTATIONS = 64
_NEAR_DUPLICATE_THRESHOLD = 0.8


class SeedFileError(InputError):
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
    snippets_control_characters: int = 0
    snippets_duplicate: int = 0
    snippets_near_duplicate: int = 0
    rows_read: int = 0
    rows_empty_seed: int = 0
    rows_duplicate_id: int = 0
    rows_other_language: int = 0
    # Where the date's seeds sit in its corpus ("file", or each mined language): the corpus size,
    # the window's place in it and its lap (0: the first use of the corpus counted from SEED_EPOCH).
    window: dict[str, dict[str, Any]] = field(default_factory=dict)


def date_window(ds: str | date) -> int:
    """The window a logical date takes of each corpus: its day number from ``SEED_EPOCH``."""
    day = ds if isinstance(ds, date) else date.fromisoformat(ds)
    return (day - SEED_EPOCH).days


def _order_key(seed: int, lap: int, key: str) -> bytes:
    """An item's place in the corpus order of ``seed`` and ``lap``: a hash, stable across runs."""
    return hashlib.sha256(f"{seed}/{lap}/{key}".encode()).digest()


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


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


# --- What may be a seed -----------------------------------------------------------------------


def _text_defect(column: str, text: str, max_bytes: int | None) -> Rejected | None:
    """Why ``text`` (the value of ``column``) cannot reach a prompt, or None."""
    if max_bytes is not None:
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            return Rejected(
                SEED_TOO_LARGE,
                f"{column} is {size:,} bytes; the limit (max_seed_bytes) is {max_bytes:,}",
                evidence={"column": column, "bytes": size, "limit": max_bytes},
            )
    found = _CONTROL_RE.search(text)
    if found is None:
        return None
    line = text.count("\n", 0, found.start()) + 1
    count = len(_CONTROL_RE.findall(text))
    code = f"U+{ord(found.group()):04X}"
    return Rejected(
        CONTROL_CHARACTERS,
        f"{column} contains {count} control character(s), the first {code} on line {line}; only tab and newline are allowed",
        evidence={"column": column, "first": code, "line": line, "count": count},
    )


def seed_defect(row: Mapping[str, Any], max_bytes: int) -> Rejected | None:
    """Why a seed row must not be published, or None: ``seed`` or ``seed_problem`` larger than
    ``max_bytes`` (UTF-8), or any text column holding a control character other than tab/newline."""
    for column, bounded in _SCREENED_COLUMNS:
        text = row.get(column)
        if text:
            defect = _text_defect(column, text, max_bytes if bounded else None)
            if defect is not None:
                return defect
    return None


def screen_seeds(table: pa.Table, *, max_bytes: int, stage: str = "seeds") -> tuple[pa.Table, list[Row]]:
    """The rows of ``table`` that may be seeds, and the others as rows of the rejected table
    (``REJECTED_SCHEMA``, stage ``stage``) with their reasons."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    kept: list[Row] = []
    rejected: list[Row] = []
    for row in table.to_pylist():
        defect = seed_defect(row, max_bytes)
        if defect is None:
            kept.append(row)
        else:
            rejected.append(rejected_row(stage, row, defect))
    if not rejected:
        return table, []
    return pa.Table.from_pylist(kept, schema=SEED_SCHEMA), rejected


# --- Magicoder-shaped files -------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    """One usable row of a seed file (non-blank seed; line endings normalized)."""

    ordinal: int  # the row's number among the file's rows, from 1 (blank JSONL lines do not count)
    lang: str
    seed: str
    index: Any  # the file's own ``index`` column, if any
    problem: str | None
    solution: str | None

    @property
    def id(self) -> str:
        return content_id("seed", self.lang, self.seed)

    @property
    def source(self) -> str:
        return f"magicoder:{self.index if self.index is not None else self.ordinal}"


def load_magicoder(
    path: str | os.PathLike[str],
    *,
    max_rows: int | None = None,
    stats: SeedStats | None = None,
) -> pa.Table:
    """Seeds from a Magicoder-OSS-Instruct-75K-shaped ``.parquet``/``.jsonl``/``.jsonl.gz``, in the
    file's order (a date's seeds: :func:`sample_magicoder`).

    The file is streamed and reading stops once ``max_rows`` rows were kept. Rows with a blank
    seed are skipped, as are rows whose id repeats an earlier row. Raises ``SeedFileError`` naming
    the file and the problem when the file is missing, corrupt or wrongly shaped.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    stats = stats if stats is not None else SeedStats()
    out = _SeedRows()
    for record in _magicoder_records(Path(path), stats):
        if not out.add(record.lang, record.seed, record.source, record.problem, record.solution):
            stats.rows_duplicate_id += 1
        elif len(out) == max_rows:
            break
    return out.table()


def sample_magicoder(
    path: str | os.PathLike[str],
    *,
    size: int,
    window: int = 0,
    seed: int = 0,
    languages: Collection[str] | None = None,
    stats: SeedStats | None = None,
) -> pa.Table:
    """Window ``window`` (see :func:`date_window`) of ``size`` seeds from a Magicoder-shaped file,
    in the file's order.

    The corpus is the file's distinct non-blank seeds in ``languages`` (all when None), ordered by
    a hash of ``seed`` and each row's id; window ``n`` is its positions ``n*size`` up to
    ``(n+1)*size``, wrapping around at the end (logged). The whole file is read, twice (its
    order, then the window's rows), so a malformed row anywhere fails every date alike.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    path = Path(path)
    wanted = _wanted_languages(languages) if languages else None
    stats = stats if stats is not None else SeedStats()
    order: list[tuple[bytes, int]] = []  # (order key, ordinal) of each row of the corpus
    ids: set[str] = set()
    found: Counter[str] = Counter()
    for record in _magicoder_records(path, stats):
        found[record.lang] += 1
        if wanted is not None and record.lang not in wanted:
            stats.rows_other_language += 1
            continue
        row_id = record.id
        if row_id in ids:
            stats.rows_duplicate_id += 1
            continue
        ids.add(row_id)
        order.append((_order_key(seed, 0, row_id), record.ordinal))  # one order for every lap
    if not order:
        languages_found = ", ".join(f"{lang} ({n})" for lang, n in sorted(found.items()))
        raise SeedFileError(f"{path}: no seeds in language(s) {', '.join(sorted(wanted or ()))}; the file has {languages_found}")
    order.sort()
    positions, stats.window["file"] = _window_positions(str(path), len(order), size, window)
    chosen = {order[position][1] for position in positions}
    out = _SeedRows()
    for record in _magicoder_records(path, SeedStats()):
        if record.ordinal in chosen:
            out.add(record.lang, record.seed, record.source, record.problem, record.solution)
            if len(out) == len(chosen):
                break
    return out.table()


def _window_positions(corpus: str, items: int, size: int, window: int) -> tuple[list[int], dict[str, Any]]:
    """Positions ``window*size`` up to ``(window+1)*size`` of a corpus of ``items``, wrapping around."""
    if size >= items:
        log.warning("%s: the corpus has %d seeds, no more than a date takes (%d): every date gets all of them", corpus, items, size)
        return list(range(items)), {"corpus": items, "window": window, "first": 0, "lap": window, "wrapped": True}
    start = window * size
    first_lap, last_lap = start // items, (start + size - 1) // items
    wrapped = first_lap != 0 or last_lap != 0
    if wrapped:
        log.warning(
            "%s: window %d (positions %d..%d of %d) wraps around the corpus, which holds %.1f dates of %d seeds; "
            "its seeds were seeds of other dates before (lap %d; lap 0 starts on %s)",
            corpus,
            window,
            start % items,
            (start + size - 1) % items,
            items,
            items / size,
            size,
            last_lap,
            SEED_EPOCH,
        )
    positions = [(start + offset) % items for offset in range(size)]
    return positions, {"corpus": items, "window": window, "first": start % items, "lap": last_lap, "wrapped": wrapped}


def _magicoder_records(path: Path, stats: SeedStats) -> Iterator[_Record]:
    """The file's rows with a non-blank seed, validated; ``SeedFileError`` for the first problem."""
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

    number = 0
    usable = 0
    for number, (where, row) in enumerate(read_rows(path), start=1):
        stats.rows_read += 1
        seed = _string_cell(path, where, row, "seed")
        lang = _string_cell(path, where, row, "lang").strip().lower()
        if not seed.strip():
            stats.rows_empty_seed += 1
            continue
        problem = _optional_string_cell(path, where, row, "problem")
        solution = _optional_string_cell(path, where, row, "solution")
        usable += 1
        yield _Record(
            ordinal=number,
            lang=lang,
            seed=_normalize_newlines(seed),
            index=row.get("index"),
            problem=None if problem is None else _normalize_newlines(problem),
            solution=None if solution is None else _normalize_newlines(solution),
        )
    if number == 0:
        raise SeedFileError(f"{path}: file contains no rows")
    if usable == 0:
        raise SeedFileError(f"{path}: all {number} rows have an empty seed")


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
    key: str  # "<root name>/<path relative to root>": the file's identity in orders and cuts


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
    max_snippet_bytes: int = MINED_SNIPPET_BYTES,
    max_file_bytes: int = 1_000_000,
    snippets_per_file: int = 2,
    languages: Collection[str] | None = None,
    seed: int = 0,
    window: int = 0,
    stats: SeedStats | None = None,
) -> pa.Table:
    """Cut up to ``max_snippets`` seed snippets for window ``window`` (see :func:`date_window`)
    out of the source files under ``roots``.

    ``max_snippets`` is split across languages as evenly as their files allow; each language
    takes its files from its block for the window (see the module doc), visiting them in the
    block's random order and alternating between languages so each gets its share. The same
    arguments always give the same table, and different windows of one lap share no file. Runs
    that are mostly blank or comments, larger than ``max_snippet_bytes`` or holding a control
    character are not cut; exact and near duplicates (MinHash LSH over token 3-shingles) are
    dropped. Raises ``InputError`` for an unknown language, a root that is not a directory, or no
    source files at all.
    """
    if max_snippets < 0:
        raise ValueError(f"max_snippets must not be negative, got {max_snippets}")
    if not 1 <= min_lines <= max_lines:
        raise ValueError(f"need 1 <= min_lines <= max_lines, got {min_lines}..{max_lines}")
    if snippets_per_file < 1:
        raise ValueError(f"snippets_per_file must be at least 1, got {snippets_per_file}")
    wanted = _wanted_languages(languages)
    stats = stats if stats is not None else SeedStats()

    by_lang: dict[str, list[_Candidate]] = {}
    for root in roots:
        for candidate in _candidate_files(Path(root), wanted, max_file_bytes, stats):
            by_lang.setdefault(candidate.lang, []).append(candidate)
    if not by_lang:
        where = ", ".join(str(root) for root in roots) or "(no roots)"
        raise InputError(f"no source files in language(s) {', '.join(sorted(wanted))} under {where}")

    shares = _language_shares({lang: len(files) * snippets_per_file for lang, files in by_lang.items()}, max_snippets)
    blocks: dict[str, list[_Candidate]] = {}
    laps: dict[str, int] = {}
    for lang in sorted(by_lang):
        if shares[lang]:
            blocks[lang], stats.window[lang] = _file_block(by_lang[lang], shares[lang], snippets_per_file, seed, window)
            laps[lang] = stats.window[lang]["lap"]
    _log_laps(stats.window, window)

    out = _SeedRows()
    dedup = _Deduplicator(stats)
    taken = {lang: 0 for lang in blocks}
    cursor = {lang: 0 for lang in blocks}
    while len(out) < max_snippets and blocks:
        # The language with the fewest snippets so far goes next, so a language with many files
        # cannot crowd out the rest.
        lang = min(blocks, key=lambda name: (taken[name], name))
        candidate = blocks[lang][cursor[lang]]
        cursor[lang] += 1
        if cursor[lang] == len(blocks[lang]):
            del blocks[lang]
        lines = _read_source_lines(candidate.path, stats)
        if lines is None:
            continue
        want = min(snippets_per_file, max_snippets - len(out))
        # Cuts depend on the file and the lap only: the same file gives the same runs on any date of a lap.
        rng = random.Random(f"{seed}/{laps[lang]}/{candidate.key}")
        for first, snippet in _snippets_from_lines(lines, lang, want, min_lines, max_lines, max_snippet_bytes, rng, stats):
            if not dedup.is_new(snippet):
                continue
            last = first + snippet.count("\n")
            if out.add(lang, snippet, f"{candidate.key}:{first}-{last}", None, None):
                taken[lang] += 1
    return out.table()


def _language_shares(capacity: Mapping[str, int], total: int) -> dict[str, int]:
    """``total`` split across languages as evenly as their capacities allow; the alphabetically
    first languages get the remainder."""
    shares = dict.fromkeys(capacity, 0)
    left = total
    open_languages = sorted(lang for lang, cap in capacity.items() if cap > 0)
    while left > 0 and open_languages:
        each, extra = divmod(left, len(open_languages))
        for position, lang in enumerate(open_languages):
            give = min(capacity[lang] - shares[lang], each + (1 if position < extra else 0))
            shares[lang] += give
            left -= give
        open_languages = [lang for lang in open_languages if shares[lang] < capacity[lang]]
    return shares


def _file_block(files: list[_Candidate], share: int, per_file: int, seed: int, window: int) -> tuple[list[_Candidate], dict[str, Any]]:
    """The files of one language that window ``window`` mines, in the order to visit them, and where
    they sit in the corpus.

    A lap is one order of all the files (a hash of ``seed``, the lap and the file),
    cut into blocks of about ``_FILES_PER_WANTED_SNIPPET`` times the files ``share`` snippets
    need (the last block takes the remainder); window ``n`` is block ``n mod blocks`` of lap
    ``n // blocks``.
    """
    size = min(len(files), math.ceil(_FILES_PER_WANTED_SNIPPET * share / per_file))
    blocks = max(1, len(files) // size)
    lap, index = divmod(window, blocks)
    order = sorted(files, key=lambda candidate: (_order_key(seed, lap, candidate.key), candidate.key))
    end = len(files) if index == blocks - 1 else (index + 1) * size
    block = order[index * size : end]
    return block, {"files": len(files), "block_files": len(block), "blocks_per_lap": blocks, "block": index, "lap": lap}


def _log_laps(blocks: Mapping[str, Mapping[str, Any]], window: int) -> None:
    """Say when a window mines files that other windows mine too."""
    small = [f"{lang} ({info['files']} files)" for lang, info in sorted(blocks.items()) if info["blocks_per_lap"] == 1]
    if small:
        log.warning(
            "window %d: too few files for two dates of seeds in %s: every date mines all of them again, in a new order with new cuts",
            window,
            ", ".join(small),
        )
    wrapped = [
        f"{lang} (lap {info['lap']} over {info['files']} files, {info['blocks_per_lap']} dates a lap)"
        for lang, info in sorted(blocks.items())
        if info["blocks_per_lap"] > 1 and info["lap"] != 0
    ]
    if wrapped:
        log.warning(
            "window %d wraps around the corpus in %s: its files were mined before, now in a new order with new cuts (lap 0 starts on %s)",
            window,
            ", ".join(wrapped),
            SEED_EPOCH,
        )


def _wanted_languages(languages: Collection[str] | None) -> frozenset[str]:
    known = frozenset(EXTENSION_LANGUAGES.values())
    if languages is None:
        return known
    wanted = frozenset(lang.strip().lower() for lang in languages)
    unknown = wanted - known
    if unknown:
        raise InputError(f"unknown language(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return wanted


def _candidate_files(root: Path, wanted: frozenset[str], max_file_bytes: int, stats: SeedStats) -> Iterator[_Candidate]:
    """Source files under ``root`` in sorted order; only names and sizes are looked at here."""
    if not root.is_dir():
        raise InputError(f"seed root {root} is not a directory")
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
                path = Path(entry.path)
                yield _Candidate(root, path, lang, f"{root.name}/{path.relative_to(root).as_posix()}")
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
    lines = _normalize_newlines(text).split("\n")
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
        defect = _text_defect("seed", snippet, max_snippet_bytes)
        if defect is not None:
            if defect.reason == SEED_TOO_LARGE:
                stats.snippets_too_large += 1
            else:
                stats.snippets_control_characters += 1
            continue
        used.append((start, end))
        found += 1
        yield start + 1, snippet


class _Deduplicator:
    """Remembers snippets seen so far: exact (whitespace-normalized) and near (MinHash LSH over
    token 3-shingles), through the deduplicator the release shares (:mod:`infinisynth.release.dedup`)."""

    def __init__(self, stats: SeedStats) -> None:
        # imported here: datasketch (and the scipy it loads) took 1.1 s of every task that imports
        # this module (the graph build, publish), and only mining needs it
        from infinisynth.release.dedup import SeenTexts

        self.stats = stats
        self.seen = SeenTexts(_NEAR_DUPLICATE_THRESHOLD, _MINHASH_PERMUTATIONS)

    def is_new(self, snippet: str) -> bool:
        """True, and remember it, unless ``snippet`` duplicates one seen before."""
        kind = self.seen.check(snippet)
        if kind == "exact":
            self.stats.snippets_duplicate += 1
        elif kind == "near":
            self.stats.snippets_near_duplicate += 1
        return kind is None
