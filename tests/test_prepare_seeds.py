"""The code pipeline's seeds step: each night its own seeds, bad rows rejected with reasons, and bad
input failing its task at once (no scheduler: the step runs through the task bodies' own calls)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from infinisynth.errors import InputError
from infinisynth.pipelines.code_instruct import SPEC, CodeInstructSettings, PrepareSeeds
from infinisynth.seeds import CONTROL_CHARACTERS, SEED_TOO_LARGE, SeedFileError
from infinisynth.steps import RunContext, run_global_step
from infinisynth.storage import Store

DATES = ("2026-01-02", "2026-01-03", "2026-01-04")
OVERSIZED = "payload = '" + "x" * 9_000 + "'\n"
WITH_NUL = "buffer = b'\0\0'\nsize = len(buffer)\n"


def seed_file(directory: Path, rows: int = 30) -> Path:
    """A Magicoder-shaped file of ``rows`` seeds, two of them unfit to publish."""
    records = [{"lang": "python", "index": i, "seed": f"def step_{i}(x):\n    return x + {i}\n"} for i in range(rows - 2)]
    records += [{"lang": "python", "index": rows - 2, "seed": OVERSIZED}, {"lang": "python", "index": rows - 1, "seed": WITH_NUL}]
    path = directory / "seeds.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def context(tmp_path: Path, ds: str, **settings: object) -> RunContext:
    return RunContext(SPEC, Store(f"file://{tmp_path / 'data'}"), ds, CodeInstructSettings(**settings))


def committed(ctx: RunContext) -> tuple[list[dict], list[dict], dict]:
    """The night's seeds, its rejected seeds and the seeds step's funnel entry."""
    seeds = ctx.partition("seeds").read().to_pylist()
    rejected = ctx.store.rejected("code_instruct", "seeds", ctx.ds).read().to_pylist()
    return seeds, rejected, ctx.partition("seeds").manifest().meta["funnel"]


def test_three_nights_of_a_seed_file_share_no_seed_and_reject_unfit_rows_with_reasons(tmp_path: Path) -> None:
    path = seed_file(tmp_path, rows=30)
    settings = {"seed_source": str(path), "max_seeds": 10, "max_seed_bytes": 8_000, "shard_size": 4}

    nights = {}
    for ds in DATES:  # 3 nights x 10 seeds = the whole corpus, so both unfit rows come up
        ctx = context(tmp_path, ds, **settings)
        shards = run_global_step(ctx, "seeds")
        nights[ds] = committed(ctx)
        assert sum(shard["rows"] for shard in shards) == len(nights[ds][0])

    published = [{row["id"] for row in seeds} for seeds, _, _ in nights.values()]
    assert not (published[0] & published[1] or published[0] & published[2] or published[1] & published[2])
    rejected = [row for _, night_rejected, _ in nights.values() for row in night_rejected]
    assert sorted(row["reason"] for row in rejected) == [CONTROL_CHARACTERS, SEED_TOO_LARGE]
    assert {json.loads(row["input_json"])["seed"] for row in rejected} == {OVERSIZED, WITH_NUL}
    assert all(row["detail"] for row in rejected)
    every_seed = [row["seed"] for seeds, _, _ in nights.values() for row in seeds]
    assert len(every_seed) == 28 and OVERSIZED not in every_seed and all("\0" not in seed for seed in every_seed)
    for seeds, night_rejected, funnel in nights.values():  # every row of the night's window accounted for
        assert funnel["rows_in"] == 10 == len(seeds) + len(night_rejected)
        assert funnel["rejected"] == len(night_rejected)
        assert funnel["rejected_by_reason"] == {row["reason"]: 1 for row in night_rejected}

    # A re-run of a night publishes the same seeds.
    again = context(tmp_path, DATES[1], **settings)
    run_global_step(again, "seeds")
    assert committed(again)[0] == nights[DATES[1]][0]


def test_three_nights_of_mined_seeds_are_disjoint_and_the_manifest_says_where_they_sit(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(30):
        body = "\n".join(f"    total_{j} = values[{j}] * {i + j}" for j in range(12))
        (root / f"mod{i}.py").write_text(f"def compute_{i}(values):\n{body}\n    return total_0\n")

    ids = []
    for ds in DATES:
        ctx = context(tmp_path, ds, seed_roots=[str(root)], max_seeds=3, mining_seed=7)
        output = PrepareSeeds(ctx).run()
        assert output.table.num_rows == 3 and output.rows_in == 3 and output.rejected == []
        assert output.meta["stats"]["window"]["python"]["lap"] == 0
        ids.append(set(output.table.column("id").to_pylist()))
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_a_night_with_nothing_to_mine_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "notes.py").write_text("# one\n# two\n# three\n# four\n# five\n# six\n")
    with pytest.raises(InputError, match="no usable seeds for 2026-01-02"):
        PrepareSeeds(context(tmp_path, "2026-01-02", seed_roots=[str(tmp_path / "tree")])).run()


# --- the task bodies: input errors fail at once -------------------------------------------------


@pytest.fixture(scope="module")
def dag():
    from infinisynth.airflow_dag import pipeline_dag

    return pipeline_dag(SPEC, dag_id="code_instruct_fail_fast", schedule=None, tags=["test"])


def test_a_malformed_seed_file_fails_the_task_without_retries(dag, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    path = tmp_path / "seeds.jsonl"
    path.write_text('{"seed": "x = 1", "lang": "python"}\n{"seed": "y = 2", "lang": \n')
    task = dag.get_task("prepare_seeds")
    assert task.retries == 2  # what the failure skips
    params = {"seed_source": str(path), "storage_root": f"file://{tmp_path / 'data'}"}

    with pytest.raises(AirflowFailException) as caught:
        task.python_callable(step="seeds", params=params, ds="2026-01-02")

    assert str(path) in str(caught.value) and "line 2" in str(caught.value)
    assert isinstance(caught.value.__cause__, SeedFileError)
    assert not (tmp_path / "data" / "code_instruct" / "seeds").exists()  # nothing published


def test_params_the_settings_refuse_fail_the_task_without_retries(dag, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    params = {"max_seeds": 0, "storage_root": f"file://{tmp_path / 'data'}"}
    with pytest.raises(AirflowFailException, match="max_seeds"):
        dag.get_task("prepare_seeds").python_callable(step="seeds", params=params, ds="2026-01-02")


def test_only_input_errors_skip_the_retries() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from infinisynth.airflow_dag import failing_fast

    with pytest.raises(AirflowFailException, match="InputError: unknown language"), failing_fast():
        raise InputError("unknown language(s) cobol")
    with pytest.raises(OSError, match="disk full"), failing_fast():  # may pass on a retry: retried
        raise OSError("disk full")


def test_unknown_seed_languages_fail_the_task_naming_them(dag, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n" * 10)
    params = {"seed_roots": [str(root)], "seed_languages": ["python", "klingon"], "storage_root": f"file://{tmp_path / 'data'}"}
    with pytest.raises(AirflowFailException, match="klingon"):
        dag.get_task("prepare_seeds").python_callable(step="seeds", params=params, ds="2026-01-02")


def test_the_rejected_seeds_table_has_the_rejected_schema(tmp_path: Path) -> None:
    from infinisynth.records import REJECTED_SCHEMA

    output = PrepareSeeds(context(tmp_path, DATES[0], seed_source=str(seed_file(tmp_path, rows=4)), max_seeds=10)).run()
    assert pa.Table.from_pylist(output.rejected, schema=REJECTED_SCHEMA).num_rows == 2
    assert output.table.num_rows == 2 and output.rows_in == 4
