"""Seed loading (Magicoder-shaped files) and snippet mining from source trees."""

from __future__ import annotations

import gzip
import json
import shutil
import sysconfig
import textwrap
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infinisynth.errors import InputError
from infinisynth.records import content_id
from infinisynth.seeds import (
    CONTROL_CHARACTERS,
    EXTENSION_LANGUAGES,
    SEED_EPOCH,
    SEED_SCHEMA,
    SEED_TOO_LARGE,
    SeedFileError,
    SeedStats,
    date_window,
    default_seed_roots,
    load_magicoder,
    mine_snippets,
    sample_magicoder,
    screen_seeds,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])

MAGICODER_ROWS = [
    {
        "lang": "python",
        "raw_index": 10,
        "index": 0,
        "seed": "def add(a, b):\n    return a + b\n",
        "openai_fingerprint": "fp_1",
        "problem": "Write add.",
        "solution": "def add(a, b): return a + b",
    },
    {
        "lang": " TypeScript ",
        "raw_index": 11,
        "index": 1,
        "seed": "export const x: number = 1;",
        "openai_fingerprint": "fp_1",
        "problem": "Declare x.",
        "solution": "const x = 1;",
    },
    {  # blank seed: skipped
        "lang": "rust",
        "raw_index": 12,
        "index": 2,
        "seed": "   \n\t",
        "openai_fingerprint": "fp_1",
        "problem": "p",
        "solution": "s",
    },
    {  # same lang and seed as the first row: same id, dropped
        "lang": "Python",
        "raw_index": 13,
        "index": 3,
        "seed": "def add(a, b):\n    return a + b\n",
        "openai_fingerprint": "fp_2",
        "problem": "Another problem.",
        "solution": "other",
    },
    {
        "lang": "shell",
        "raw_index": 14,
        "index": 4,
        "seed": "echo hello",
        "openai_fingerprint": "fp_2",
        "problem": "Say hello.",
        "solution": "echo hello",
    },
]


def write_parquet(path: Path, rows: list[dict], **kwargs) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, **kwargs)
    return path


def write_jsonl(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def jsonl_lines(rows: list[dict]) -> list[str]:
    return [json.dumps(row) for row in rows]


def assert_error(path: Path, *fragments: str, **kwargs) -> str:
    """Loading ``path`` raises SeedFileError naming the file and every fragment."""
    with pytest.raises(SeedFileError) as caught:
        load_magicoder(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


# --- load_magicoder ----------------------------------------------------------------------------


def test_parquet_columns_are_mapped_to_the_seed_schema(tmp_path: Path) -> None:
    stats = SeedStats()
    table = load_magicoder(write_parquet(tmp_path / "m.parquet", MAGICODER_ROWS), stats=stats)

    assert table.schema == SEED_SCHEMA
    rows = table.to_pylist()
    assert [row["lang"] for row in rows] == ["python", "typescript", "shell"]
    assert [row["source"] for row in rows] == ["magicoder:0", "magicoder:1", "magicoder:4"]
    assert rows[0]["seed"] == MAGICODER_ROWS[0]["seed"]
    assert rows[0]["seed_problem"] == "Write add."  # the first of the two same-id rows wins
    assert rows[1]["seed_solution"] == "const x = 1;"
    assert all(row["origin"] == "seed" and row["parent_ids"] == [] for row in rows)
    assert [row["id"] for row in rows] == [content_id("seed", row["lang"], row["seed"]) for row in rows]
    assert (stats.rows_read, stats.rows_empty_seed, stats.rows_duplicate_id) == (5, 1, 1)


@pytest.mark.parametrize("name", ["m.jsonl", "m.jsonl.gz"])
def test_jsonl_loads_the_same_table_as_parquet(tmp_path: Path, name: str) -> None:
    from_parquet = load_magicoder(write_parquet(tmp_path / "m.parquet", MAGICODER_ROWS))
    path = write_jsonl(tmp_path / name, jsonl_lines(MAGICODER_ROWS))

    first, second = load_magicoder(path), load_magicoder(path)

    assert first.equals(from_parquet)
    assert first.column("id").to_pylist() == second.column("id").to_pylist()


def test_optional_columns_may_be_absent(tmp_path: Path) -> None:
    rows = [{"seed": "SELECT 1;", "lang": "sql"}, {"seed": "SELECT 2;", "lang": "sql"}]
    table = load_magicoder(write_parquet(tmp_path / "m.parquet", rows))

    assert table.column("source").to_pylist() == ["magicoder:1", "magicoder:2"]
    assert table.column("seed_problem").null_count == 2
    assert table.column("seed_solution").null_count == 2


def test_max_rows_stops_reading_parquet_early(tmp_path: Path) -> None:
    rows = [{"seed": f"x = {i}", "lang": "python", "index": i} for i in range(5000)]
    path = write_parquet(tmp_path / "big.parquet", rows, row_group_size=500)
    stats = SeedStats()

    table = load_magicoder(path, max_rows=10, stats=stats)

    assert table.column("seed").to_pylist() == [f"x = {i}" for i in range(10)]
    assert stats.rows_read == 10


def test_max_rows_stops_reading_jsonl_before_a_later_bad_line(tmp_path: Path) -> None:
    lines = [*jsonl_lines(MAGICODER_ROWS[:2]), "{not json"]
    path = write_jsonl(tmp_path / "m.jsonl", lines)

    assert load_magicoder(path, max_rows=2).num_rows == 2
    assert_error(path, "line 3")  # without the limit the bad line is reached


def test_missing_file(tmp_path: Path) -> None:
    assert_error(tmp_path / "absent.parquet", "not found")


def test_unknown_extension_lists_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "seeds.csv"
    path.write_text("seed,lang\nx,python\n")
    assert_error(path, ".parquet", ".jsonl", ".jsonl.gz")


@pytest.mark.parametrize("name", ["empty.parquet", "empty.jsonl", "empty.jsonl.gz"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.touch()
    assert_error(path, "empty")


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"this is not parquet at all" * 10)
    assert_error(path, "not a valid Parquet file")


def test_truncated_parquet(tmp_path: Path) -> None:
    whole = write_parquet(tmp_path / "whole.parquet", MAGICODER_ROWS).read_bytes()
    path = tmp_path / "truncated.parquet"
    path.write_bytes(whole[: len(whole) // 2])
    assert_error(path, "not a valid Parquet file")


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(b"plain bytes, not gzip\n")
    assert_error(path, "gzip")


def test_jsonl_line_that_is_not_json_names_the_line(tmp_path: Path) -> None:
    lines = [*jsonl_lines(MAGICODER_ROWS[:2]), '{"seed": "x", "lang": ']
    assert_error(write_jsonl(tmp_path / "m.jsonl", lines), "line 3", "not valid JSON")


def test_jsonl_line_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"seed": "x", "lang": "c"}\n{"seed": "caf\xe9", "lang": "c"}\n')
    assert_error(path, "line 2", "UTF-8")


def test_jsonl_row_that_is_not_an_object(tmp_path: Path) -> None:
    lines = [jsonl_lines(MAGICODER_ROWS)[0], '["seed", "lang"]']
    assert_error(write_jsonl(tmp_path / "m.jsonl", lines), "line 2", "not a JSON object", "list")


def test_parquet_missing_required_column_lists_what_was_found(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "m.parquet", [{"seed": "x", "problem": "p"}])
    message = assert_error(path, "lang", "seed, problem")
    assert "missing required column" in message


def test_jsonl_missing_required_columns(tmp_path: Path) -> None:
    lines = ['{"seed": "x", "lang": "c"}', '{"code": "x", "language": "c"}']
    message = assert_error(write_jsonl(tmp_path / "m.jsonl", lines), "line 2", "seed, lang")
    assert "code, language" in message


def test_jsonl_seed_not_a_string_names_column_and_line(tmp_path: Path) -> None:
    lines = ['{"seed": "x", "lang": "c"}', '{"seed": 42, "lang": "c"}']
    assert_error(write_jsonl(tmp_path / "m.jsonl", lines), "line 2", "'seed'", "int")


def test_parquet_lang_not_a_string_names_column_and_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "m.parquet", [{"seed": "x", "lang": 3}])
    assert_error(path, "row 1", "'lang'")


def test_parquet_with_zero_rows(tmp_path: Path) -> None:
    schema = pa.schema([("seed", pa.string()), ("lang", pa.string())])
    path = tmp_path / "m.parquet"
    pq.write_table(schema.empty_table(), path)
    assert_error(path, "no rows")


def test_jsonl_with_only_blank_lines_has_zero_rows(tmp_path: Path) -> None:
    assert_error(write_jsonl(tmp_path / "m.jsonl", ["", "   "]), "no rows")


def test_all_seeds_blank(tmp_path: Path) -> None:
    lines = ['{"seed": "", "lang": "c"}', '{"seed": "  ", "lang": "c"}']
    assert_error(write_jsonl(tmp_path / "m.jsonl", lines), "empty seed")


def test_seed_file_error_is_an_input_error() -> None:
    assert issubclass(SeedFileError, InputError)
    assert issubclass(SeedFileError, ValueError)


# --- mine_snippets -----------------------------------------------------------------------------


def python_source(name: str, functions: int = 6) -> str:
    """A realistic Python module whose functions all differ from other modules' functions."""
    blocks = [f'"""Module {name}."""\n\nimport math\n']
    for i in range(functions):
        blocks.append(
            textwrap.dedent(
                f"""
                # helper {i}
                def {name}_step_{i}(values, scale={i + 2}):
                    total_{i} = 0
                    for position, value in enumerate(values):
                        if value % {i + 3} == 0:
                            total_{i} += math.floor(value * scale / (position + {i + 1}))

                    return total_{i} - len(values) * {i * 7 + 1}
                """
            )
        )
    return "\n".join(blocks)


def js_source(name: str, functions: int = 6) -> str:
    blocks = ["'use strict';\n"]
    for i in range(functions):
        blocks.append(
            textwrap.dedent(
                f"""
                // {name} handler {i}
                function {name}Handler{i}(request, response) {{
                  const limit{i} = request.query.limit || {i + 10};
                  const items = request.body.items.slice(0, limit{i});

                  for (const item of items) {{
                    response.write(JSON.stringify({{ id: item.id, rank: {i} }}));
                  }}
                  return response.end();
                }}
                """
            )
        )
    return "\n".join(blocks)


def sql_source(name: str = "orders", tables: int = 6) -> str:
    blocks = []
    for i in range(tables):
        blocks.append(
            textwrap.dedent(
                f"""
                -- table {i}
                CREATE TABLE {name}_{i} (
                    id INTEGER PRIMARY KEY,
                    customer_{i} TEXT NOT NULL,

                    amount_{i} NUMERIC(10, 2) DEFAULT {i},
                    created_at TIMESTAMP
                );
                SELECT customer_{i}, SUM(amount_{i}) FROM {name}_{i} GROUP BY customer_{i};
                """
            )
        )
    return "\n".join(blocks)


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    """A tree of real-looking sources plus every kind of file the miner must skip."""
    root = tmp_path / "tree"
    files = {
        "pkg/alpha.py": python_source("alpha"),
        "pkg/beta.py": python_source("beta"),
        "pkg/tests/test_gamma.py": python_source("gamma"),
        "web/app.js": js_source("app"),
        "web/util.mjs": js_source("util"),
        "node_modules/lib/index.cjs": js_source("lib"),
        "db/schema.sql": sql_source(),
        "copy/alpha.py": python_source("alpha"),  # exact duplicate of pkg/alpha.py
        "notes.txt": python_source("notes"),  # not a source extension
        ".git/hooks/update.py": python_source("git"),
        "pkg/__pycache__/cached.py": python_source("cached"),
        "site-packages/vendored.py": python_source("vendored"),
        "minified.js": js_source("short") + "var a=1;" * 200 + "\n",
        "huge.py": python_source("huge", functions=400),
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "blob.py").write_bytes(python_source("blob").encode() + b"\0\1\2")
    (root / "latin1.py").write_bytes(python_source("caf\xe9").encode("latin-1"))
    (root / "link.py").symlink_to(root / "pkg" / "alpha.py")
    (root / "linked_dir").symlink_to(root / "pkg", target_is_directory=True)
    return root


MINE_OPTIONS = dict(max_snippets=1000, min_lines=5, max_lines=10, max_snippet_bytes=2000, max_file_bytes=20_000)


def snippet_lines_in_file(root: Path, source: str) -> tuple[Path, int, int]:
    """Parse ``"<root name>/<relative path>:<first>-<last>"`` into the file and its line range."""
    location, line_range = source.rsplit(":", 1)
    root_name, relative = location.split("/", 1)
    assert root_name == root.name
    first, last = (int(number) for number in line_range.split("-"))
    return root / relative, first, last


def test_mining_skips_unsuitable_files_and_cuts_bounded_snippets(source_tree: Path) -> None:
    assert (source_tree / "huge.py").stat().st_size > MINE_OPTIONS["max_file_bytes"]
    stats = SeedStats()
    table = mine_snippets([source_tree], **MINE_OPTIONS, stats=stats)

    assert table.schema == SEED_SCHEMA
    assert table.num_rows > 10
    assert stats.files_skipped_binary == 1
    assert stats.files_skipped_encoding == 1
    assert stats.files_skipped_size == 1
    assert stats.files_skipped_minified == 1
    assert stats.symlinks_skipped == 2

    rows = table.to_pylist()
    files = {snippet_lines_in_file(source_tree, row["source"])[0] for row in rows}
    relative = {path.relative_to(source_tree).as_posix() for path in files}
    assert relative <= {
        "pkg/alpha.py",
        "pkg/beta.py",
        "pkg/tests/test_gamma.py",
        "web/app.js",
        "web/util.mjs",
        "node_modules/lib/index.cjs",
        "db/schema.sql",
        "copy/alpha.py",
    }
    assert {"pkg/tests/test_gamma.py", "node_modules/lib/index.cjs", "db/schema.sql"} <= relative

    for row in rows:
        path, first, last = snippet_lines_in_file(source_tree, row["source"])
        lines = row["seed"].split("\n")
        assert MINE_OPTIONS["min_lines"] <= len(lines) <= MINE_OPTIONS["max_lines"]
        assert len(row["seed"].encode()) <= MINE_OPTIONS["max_snippet_bytes"]
        assert lines[0].strip() and lines[-1].strip()
        # The source names exactly the lines the snippet was cut from, dedented.
        original = path.read_text(encoding="utf-8").split("\n")[first - 1 : last]
        assert row["seed"] == textwrap.dedent("\n".join(original))
        assert row["lang"] == EXTENSION_LANGUAGES[path.suffix]
        assert row["id"] == content_id("seed", row["lang"], row["seed"])
        assert row["origin"] == "seed" and row["parent_ids"] == []
        assert row["seed_problem"] is None and row["seed_solution"] is None

    assert set(table.column("lang").to_pylist()) == {"python", "javascript", "sql"}
    normalized = [" ".join(row["seed"].split()) for row in rows]
    assert len(set(normalized)) == len(normalized)


def test_mining_is_reproducible_per_seed(source_tree: Path) -> None:
    options = {**MINE_OPTIONS, "max_snippets": 12}
    first = mine_snippets([source_tree], **options, seed=1)
    again = mine_snippets([source_tree], **options, seed=1)
    other = mine_snippets([source_tree], **options, seed=2)

    assert first.num_rows == 12
    assert first.equals(again)
    assert first.column("source").to_pylist() != other.column("source").to_pylist()


def test_languages_restricts_what_is_mined(source_tree: Path) -> None:
    table = mine_snippets([source_tree], **MINE_OPTIONS, languages=["SQL"])
    assert table.num_rows > 0
    assert set(table.column("lang").to_pylist()) == {"sql"}

    with pytest.raises(InputError, match="cobol"):
        mine_snippets([source_tree], **MINE_OPTIONS, languages=["cobol"])


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("whitespace", {"snippets_duplicate": 1, "snippets_near_duplicate": 0}),
        ("one_token", {"snippets_duplicate": 0, "snippets_near_duplicate": 1}),
    ],
)
def test_exact_and_near_duplicates_are_dropped(tmp_path: Path, variant: str, expected: dict[str, int]) -> None:
    body = python_source("dup", functions=2).strip("\n")
    variants = {
        "whitespace": body.replace(" = ", "   =   ").replace("\n", "  \n"),
        "one_token": body.replace("len(values) * 8", "len(values) * 9"),
    }
    assert variants[variant] != body
    (tmp_path / "a.py").write_text(body)
    (tmp_path / "b.py").write_text(variants[variant])
    lines = len(body.split("\n"))
    unrelated = [f"row_{i} = {{'k{i}': [{i}, {i * i}], 'tag': 'other_{i}'}}" for i in range(lines)]
    (tmp_path / "c.py").write_text("\n".join(unrelated))
    stats = SeedStats()

    # One possible run per file (the whole file), so whole files are what gets compared.
    table = mine_snippets([tmp_path], max_snippets=10, min_lines=lines, max_lines=lines, stats=stats)

    assert table.num_rows == 2
    assert sum("other_0" in seed for seed in table.column("seed").to_pylist()) == 1
    counts = {name: getattr(stats, name) for name in expected}
    assert counts == expected


def test_comment_only_runs_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "comments.py").write_text("\n".join(f"# remark {i}" for i in range(40)))
    (tmp_path / "sparse.sql").write_text("\n\n\n".join(f"SELECT {i};" for i in range(20)))
    stats = SeedStats()

    table = mine_snippets([tmp_path], max_snippets=10, min_lines=6, stats=stats)

    assert table.num_rows == 0
    assert stats.snippets_rejected_blank > 0


def test_oversized_snippets_are_skipped(tmp_path: Path) -> None:
    wide = "\n".join(f"value_{i} = '{'x' * 480}'" for i in range(30))
    (tmp_path / "wide.py").write_text(wide)
    stats = SeedStats()

    table = mine_snippets([tmp_path], max_snippets=5, max_snippet_bytes=2000, stats=stats)

    assert table.num_rows == 0
    assert stats.snippets_too_large > 0


def test_files_are_sampled_across_the_whole_tree(tmp_path: Path) -> None:
    for d in range(20):
        for f in range(5):
            path = tmp_path / f"dir{d:02d}" / f"mod{f}.py"
            path.parent.mkdir(exist_ok=True)
            path.write_text(python_source(f"m{d}_{f}"))

    table = mine_snippets([tmp_path], max_snippets=10, snippets_per_file=1)

    directories = {source.split("/")[1] for source in table.column("source").to_pylist()}
    assert table.num_rows == 10
    assert len(directories) >= 5  # sorted order would have stayed in dir00 and dir01


def test_a_large_language_does_not_crowd_out_a_small_one(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"mod{i}.py").write_text(python_source(f"m{i}"))
    for name in ("invoices", "payments"):
        (tmp_path / f"{name}.sql").write_text(sql_source(name))

    table = mine_snippets([tmp_path], max_snippets=8, snippets_per_file=2)

    # Both SQL files give their two snippets; Python fills the other half.
    assert Counter(table.column("lang").to_pylist()) == {"python": 4, "sql": 4}


def test_mining_the_standard_library_is_fast_and_python_only() -> None:
    stats = SeedStats()
    started = time.perf_counter()
    table = mine_snippets([STDLIB], max_snippets=200, languages={"python"}, stats=stats)
    elapsed = time.perf_counter() - started

    assert table.num_rows == 200
    assert set(table.column("lang").to_pylist()) == {"python"}
    assert all(".py:" in source for source in table.column("source").to_pylist())
    assert len(set(table.column("id").to_pylist())) == 200
    assert elapsed < 10, f"mining 200 stdlib snippets took {elapsed:.1f}s"


def test_default_roots_include_the_standard_library() -> None:
    roots = default_seed_roots()
    assert STDLIB in roots
    assert all(root.is_dir() for root in roots)


def test_default_roots_without_npm_are_just_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")  # npm cannot be found
    assert default_seed_roots() == [STDLIB]


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_default_roots_mine_python_and_javascript_in_balance() -> None:
    roots = default_seed_roots()
    assert any(root.name == "node_modules" for root in roots)

    table = mine_snippets(roots, max_snippets=40, languages=["python", "javascript"])

    assert Counter(table.column("lang").to_pylist()) == {"python": 20, "javascript": 20}


# --- a date's own seeds ------------------------------------------------------------------------

DATES = ("2026-01-02", "2026-01-03", "2026-01-04")  # windows 1, 2 and 3: one lap of every corpus below


def ids_of(table: pa.Table) -> set[str]:
    return set(table.column("id").to_pylist())


def files_of(table: pa.Table) -> set[str]:
    return {source.rsplit(":", 1)[0] for source in table.column("source").to_pylist()}


def assert_pairwise_disjoint(tables: list[pa.Table]) -> None:
    for i, first in enumerate(tables):
        for second in tables[i + 1 :]:
            assert not ids_of(first) & ids_of(second)


def test_a_dates_window_is_its_day_number_from_the_epoch() -> None:
    assert date_window(SEED_EPOCH) == 0
    assert date_window("2026-01-01") == 0
    assert [date_window(ds) for ds in DATES] == [1, 2, 3]
    assert date_window("2026-03-01") == 59
    assert date_window("2025-12-31") == -1


def magicoder_rows(count: int, langs: tuple[str, ...] = ("python",)) -> list[dict]:
    return [
        {"lang": langs[i % len(langs)], "index": i, "seed": f"def task_{i}(x):\n    return x * {i}\n", "problem": f"Multiply by {i}."}
        for i in range(count)
    ]


def write_seed_file(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        return write_parquet(path, rows)
    return write_jsonl(path, jsonl_lines(rows))


@pytest.mark.parametrize("name", ["m.parquet", "m.jsonl"])
def test_three_dates_take_disjoint_seeds_from_a_magicoder_file_and_a_rerun_the_same(tmp_path: Path, name: str) -> None:
    path = write_seed_file(tmp_path / name, magicoder_rows(40))

    tables = [sample_magicoder(path, size=8, window=date_window(ds)) for ds in DATES]

    assert [table.num_rows for table in tables] == [8, 8, 8]
    assert_pairwise_disjoint(tables)
    assert all(table.schema == SEED_SCHEMA for table in tables)
    for ds, table in zip(DATES, tables):
        assert sample_magicoder(path, size=8, window=date_window(ds)).equals(table)  # a re-run of the date
        numbers = [int(source.split(":")[1]) for source in table.column("source").to_pylist()]
        assert numbers == sorted(numbers)  # the window's rows, in the file's order


def test_the_mining_seed_changes_which_rows_a_date_gets(tmp_path: Path) -> None:
    path = write_seed_file(tmp_path / "m.jsonl", magicoder_rows(40))
    assert ids_of(sample_magicoder(path, size=8, window=3, seed=0)) != ids_of(sample_magicoder(path, size=8, window=3, seed=1))


def test_a_magicoder_corpus_wraps_around_once_used_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_seed_file(tmp_path / "m.jsonl", magicoder_rows(10))
    everything = ids_of(load_magicoder(path))

    with caplog.at_level("WARNING", logger="infinisynth.seeds"):
        first, second = sample_magicoder(path, size=4, window=0), sample_magicoder(path, size=4, window=1)
    assert not caplog.records  # 8 of 10 rows: nothing used twice yet
    stats = SeedStats()
    with caplog.at_level("WARNING", logger="infinisynth.seeds"):
        third = sample_magicoder(path, size=4, window=2, stats=stats)

    assert not ids_of(first) & ids_of(second)
    assert ids_of(first) | ids_of(second) | ids_of(third) == everything  # every row served before any repeats
    assert len(ids_of(third) & ids_of(first)) == 2  # the last two rows, then the first two again
    assert "wraps around" in caplog.text and str(path) in caplog.text
    assert stats.window["file"] == {"corpus": 10, "window": 2, "first": 8, "lap": 1, "wrapped": True}


def test_a_magicoder_corpus_smaller_than_a_date_gives_every_date_all_of_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_seed_file(tmp_path / "m.jsonl", magicoder_rows(5))
    with caplog.at_level("WARNING", logger="infinisynth.seeds"):
        tables = [sample_magicoder(path, size=8, window=date_window(ds)) for ds in DATES]
    assert all(table.equals(load_magicoder(path)) for table in tables)
    assert "every date gets all of them" in caplog.text


def test_magicoder_languages_choose_the_corpus(tmp_path: Path) -> None:
    path = write_seed_file(tmp_path / "m.jsonl", magicoder_rows(30, langs=("python", "java", "rust")))

    table = sample_magicoder(path, size=4, window=1, languages=["Java"])
    assert table.num_rows == 4 and set(table.column("lang").to_pylist()) == {"java"}

    with pytest.raises(InputError, match="cobol"):
        sample_magicoder(path, size=4, languages=["cobol"])
    with pytest.raises(SeedFileError) as caught:
        sample_magicoder(path, size=4, languages=["go"])
    assert str(path) in str(caught.value) and "java (10), python (10), rust (10)" in str(caught.value)


def test_a_malformed_row_anywhere_fails_every_date_naming_file_and_line(tmp_path: Path) -> None:
    lines = jsonl_lines(magicoder_rows(60))
    lines.insert(56, '{"seed": "x", "lang": ')
    path = write_jsonl(tmp_path / "m.jsonl", lines)

    for ds in DATES:  # the bad line is in no date's window, yet every date refuses the file
        with pytest.raises(InputError) as caught:
            sample_magicoder(path, size=4, window=date_window(ds))
        assert isinstance(caught.value, SeedFileError)
        assert str(path) in str(caught.value) and "line 57" in str(caught.value)


def test_seed_line_endings_are_normalized(tmp_path: Path) -> None:
    path = write_seed_file(tmp_path / "m.jsonl", [{"lang": "c", "seed": "int x;\r\nint y;\rint z;\r\n", "problem": "a\r\nb"}])
    row = sample_magicoder(path, size=1).to_pylist()[0]
    assert row["seed"] == "int x;\nint y;\nint z;\n" and row["seed_problem"] == "a\nb"
    assert row["id"] == content_id("seed", "c", row["seed"])


def test_screening_rejects_oversized_and_control_character_seeds_with_reasons(tmp_path: Path) -> None:
    rows = [
        {"lang": "python", "seed": "def ok():\n\treturn 1\n"},
        {"lang": "python", "seed": "x = '" + "a" * 9_000 + "'"},
        {"lang": "c", "seed": 'char *s = "a\0b";\nint n;'},
        {"lang": "c", "seed": "int m;", "problem": "Explain\n\x1b[31mthis"},
        {"lang": "c", "seed": "int k;", "solution": "int k;\x7f"},
    ]
    table = sample_magicoder(write_seed_file(tmp_path / "m.jsonl", rows), size=10)
    assert table.num_rows == 5

    kept, rejected = screen_seeds(table, max_bytes=8_000)

    assert kept.schema == SEED_SCHEMA
    assert kept.column("seed").to_pylist() == ["def ok():\n\treturn 1\n"]  # tabs and newlines are fine
    by_id = {row["id"]: row for row in rejected}
    assert set(by_id) == ids_of(table) - ids_of(kept)
    reasons = {json.loads(row["input_json"])["seed"][:6]: (row["reason"], row["detail"]) for row in rejected}
    assert reasons["x = 'a"] == (SEED_TOO_LARGE, "seed is 9,006 bytes; the limit (max_seed_bytes) is 8,000")
    assert reasons["char *"][0] == CONTROL_CHARACTERS and "seed" in reasons["char *"][1] and "U+0000 on line 1" in reasons["char *"][1]
    assert (
        reasons["int m;"][0] == CONTROL_CHARACTERS
        and reasons["int m;"][1].startswith("seed_problem")
        and "U+001B on line 2" in reasons["int m;"][1]
    )
    assert reasons["int k;"][0] == CONTROL_CHARACTERS and reasons["int k;"][1].startswith("seed_solution")
    assert all(row["stage"] == "seeds" and "\0" not in row["input_json"] for row in rejected)  # the input kept, JSON-escaped


def test_screening_a_clean_table_keeps_it_whole(source_tree: Path) -> None:
    table = mine_snippets([source_tree], **MINE_OPTIONS)
    kept, rejected = screen_seeds(table, max_bytes=MINE_OPTIONS["max_snippet_bytes"])
    assert kept is table and rejected == []


def many_modules(root: Path, python: int, javascript: int = 0) -> Path:
    for i in range(python):
        path = root / f"py{i % 4}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(python_source(f"m{i}"))
    for i in range(javascript):
        path = root / "js" / f"app{i}.js"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(js_source(f"a{i}"))
    return root


def test_three_dates_mine_disjoint_seeds_and_a_rerun_the_same(tmp_path: Path) -> None:
    root = many_modules(tmp_path / "tree", python=36, javascript=24)
    mine = lambda ds: mine_snippets([root], max_snippets=8, window=date_window(ds))  # noqa: E731

    tables = [mine(ds) for ds in DATES]

    assert [table.num_rows for table in tables] == [8, 8, 8]
    assert all(Counter(table.column("lang").to_pylist()) == {"python": 4, "javascript": 4} for table in tables)
    assert_pairwise_disjoint(tables)
    for first, second in [(0, 1), (0, 2), (1, 2)]:
        assert not files_of(tables[first]) & files_of(tables[second])  # not even a file in common
    for ds, table in zip(DATES, tables):
        assert mine(ds).equals(table)


def test_mined_files_wrap_around_once_used_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = many_modules(tmp_path / "tree", python=8)
    every_file = {f"tree/{path.relative_to(root).as_posix()}" for path in root.rglob("*.py")}
    mine = lambda window, stats=None: mine_snippets([root], max_snippets=2, snippets_per_file=1, window=window, stats=stats)  # noqa: E731

    with caplog.at_level("WARNING", logger="infinisynth.seeds"):
        first, second = mine(0), mine(1)
    assert not caplog.records
    stats = SeedStats()
    with caplog.at_level("WARNING", logger="infinisynth.seeds"):
        third = mine(2, stats)

    # Blocks of four files (twice the files two snippets need): two dates a lap.
    assert stats.window["python"] == {"files": 8, "block_files": 4, "blocks_per_lap": 2, "block": 0, "lap": 1}
    assert not files_of(first) & files_of(second)
    assert files_of(third) <= every_file
    assert "wraps around" in caplog.text and "lap 1" in caplog.text
    assert mine(2).equals(third)


def test_mined_runs_with_control_characters_are_not_cut(tmp_path: Path) -> None:
    clean = python_source("clean").split("\n")
    escaped = "\n".join(f"{line}  # \x1b[0m" if line.strip() else line for line in clean)
    (tmp_path / "colors.py").write_text(escaped)
    (tmp_path / "late_nul.py").write_text(python_source("late") * 30 + "\n".join(f"v{i} = '\0'" for i in range(40)))
    stats = SeedStats()

    table = mine_snippets([tmp_path], max_snippets=20, snippets_per_file=4, stats=stats)

    assert stats.snippets_control_characters > 0
    assert all("\x1b" not in seed and "\0" not in seed for seed in table.column("seed").to_pylist())
    assert screen_seeds(table, max_bytes=2_000)[1] == []


def test_mining_nothing_at_all_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no code here")
    with pytest.raises(InputError, match="no source files"):
        mine_snippets([tmp_path], max_snippets=5)
    with pytest.raises(InputError, match="not a directory"):
        mine_snippets([tmp_path / "absent"], max_snippets=5)
