"""Fixed costs of a task (issue 16): a mapped task with nothing to do ends at once, full garbage
collections skip what the task process imported, and every task body reports what it cost."""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import time

import pytest

from infinisynth.airflow_dag import footprint, settle, switched_off
from infinisynth.llm.client import LLMClient
from infinisynth.settings import role_config, store_for
from infinisynth.shards import commit_stage, run_stage_shard
from infinisynth.specs.code_instruct import SPEC, CodeInstructSettings
from infinisynth.steps import RunContext, model_stage, stage_class

DS = "2026-03-01"
# Nothing listens there: a shard that tried to reach the endpoint would fail.
NOWHERE = {"host": "http://127.0.0.1:9/v1", "extra": {"model": "scripted", "max_retries": 0, "timeout_s": 1}}


def test_mined_seeds_switch_seed_scoring_off_before_the_library_loads():
    assert switched_off(SPEC, "seed_quality", {"seed_source": "mine"})  # mined snippets carry no problems
    assert switched_off(SPEC, "seed_quality", {"seed_source": "/data/seeds.jsonl", "score_seed_problems": False})
    assert not switched_off(SPEC, "seed_quality", {"seed_source": "/data/seeds.jsonl"})
    assert not switched_off(SPEC, "reverse", {"seed_source": "mine"})
    assert not switched_off(SPEC, "reverse", {"max_seeds": -1})  # invalid Params: the task's full path reports them

    # The check needs the declarations only: no pyarrow, no OpenAI client, no stage module.
    probe = (
        "import sys\n"
        "from infinisynth.airflow_dag import switched_off\n"
        "from infinisynth.specs.code_instruct import SPEC\n"
        "assert switched_off(SPEC, 'seed_quality', {'seed_source': 'mine'})\n"
        "print(sorted(m for m in ('pyarrow', 'openai', 'infinisynth.steps', 'infinisynth.pipelines.code_instruct') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_a_shard_with_no_rows_asks_nothing_and_still_commits(tmp_path, monkeypatch):
    async def no_client(self):  # an empty shard must not open a client (limits store, connection pool)
        raise AssertionError("an empty shard entered an LLM client")

    monkeypatch.setattr(LLMClient, "__aenter__", no_client)
    store = store_for(f"file://{tmp_path}")
    settings = CodeInstructSettings(seed_source=str(tmp_path / "seeds.jsonl"))
    ctx = RunContext(SPEC, store, DS, settings, roles=lambda role: role_config(role, lambda _: NOWHERE))
    step = SPEC.step("seed_quality")
    cls = stage_class(step)
    role = ctx.role(cls.role)
    results = []
    for shard in (0, 1):  # the first pays for lazy imports (pyarrow loads pandas on its first table)
        started = time.perf_counter()
        rows = cls.prepare_rows([{"id": f"s{shard}", "seed": "x = 1", "lang": "python"}])  # a seed without a problem
        results.append(run_stage_shard(store, SPEC.name, step.name, DS, shard, rows, role, model_stage(ctx, step)))
        elapsed = time.perf_counter() - started
    assert elapsed < 1, f"an empty shard took {elapsed:.2f}s"
    for result in results:
        assert result.rejected is not None  # an empty rejected file, so the commit publishes one
        assert (result.rows_in, result.output["rows"], result.rejected["rows"], result.passed) == (0, 0, 0, 0)
    funnel = commit_stage(store, SPEC.name, step.name, DS, cls.schema, [r.to_dict() for r in results])
    assert (funnel["rows_in"], funnel["rows_out"], funnel["rejected"]) == (0, 0, 0)
    assert store.partition(SPEC.name, step.name, DS).read().num_rows == 0


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # this test process goes on collecting as before


def test_settle_freezes_the_imports_and_footprint_reports_the_task(caplog, unfrozen):
    caplog.set_level(logging.INFO, logger="infinisynth.airflow_dag")
    with footprint("reverse"):
        gc.disable()  # as a task body does while it imports the library
        settle()
        assert gc.isenabled()
        garbage: list[list[object]] = [[n] for n in range(50_000)]
        for item in garbage:
            item.append(item)  # cycles: only a collection frees them
        del garbage
        gc.collect()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the modules, classes and schemas imported so far
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("task footprint: "))
    figures = json.loads(line.removeprefix("task footprint: "))
    assert figures["step"] == "reverse" and figures["gc_frozen"] > 10_000
    assert figures["gc_full"] >= 1 and figures["gc_s"] >= 0 and figures["peak_rss_mb"] > 0
    assert set(figures) >= {
        "startup_s",
        "wall_s",
        "cpu_s",
        "children_cpu_s",
        "children_peak_rss_mb",
        "gc_max_pause_s",
        "gc_pauses_over_100ms",
    }
