"""
### Infinite-Instruct: code instruction data

Real code snippets become self-contained programming problems (Reverse Construction). Seeds are
mined from source trees or loaded from a Magicoder-OSS-Instruct-shaped file, split into shards,
and each shard is a mapped task. The logical date is the partition: a re-run or backfill of a date
rewrites that date's partitions only.

Data: `{storage_root}/code_instruct/{stage}/ds={date}/`, rejected rows under
`{storage_root}/code_instruct/rejected/{stage}/ds={date}/`. Model calls use the `llm` pool and the
`llm_generator` connection (falling back to `llm_default`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task

REVERSE_PROBLEMS = Asset(name="code_instruct.reverse", uri="infinisynth://code_instruct/reverse")


@dag(
    dag_id="code_instruct",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["infinite-instruct", "code"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "seed_source": Param("mine", type="string", description="'mine' to mine snippets from seed_roots, or a Magicoder-OSS-Instruct-shaped Parquet/JSONL path"),
        "seed_roots": Param([], type="array", description="Source trees to mine; empty = the Python standard library and global npm modules"),
        "seed_languages": Param([], type="array", description="Languages to keep (python, javascript, java, cpp, sql, ...); empty = all"),
        "max_seeds": Param(200, type="integer", minimum=1),
        "shard_size": Param(50, type="integer", minimum=1, description="Seeds per mapped task"),
        "mining_seed": Param(0, type="integer", description="Random seed for snippet mining"),
        "problems_per_seed": Param(1, type="integer", minimum=1, maximum=10),
        "generator_model": Param("", type="string", description="Override the generator connection's model"),
        "generator_temperature": Param(None, type=["null", "number"], minimum=0, maximum=2),
        "generator_max_tokens": Param(None, type=["null", "integer"], minimum=1),
        "storage_root": Param("", type="string", description="Object-storage URL; empty = INFINISYNTH_ROOT or data/ in the project"),
    },
)
def code_instruct():
    @task
    def prepare_seeds(params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_store
        from infinisynth.pipelines import code_instruct as pipeline

        return pipeline.prepare_seeds(run_store(params), ds, pipeline.CodeInstructSettings(**params))

    @task(pool="llm", max_active_tis_per_dagrun=4, map_index_template="shard {{ task.op_kwargs['shard']['shard'] }}")
    def reverse_construct(shard: dict, params=None, ds=None) -> dict:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import code_instruct as pipeline

        settings = pipeline.CodeInstructSettings(**params)
        role = run_role("generator", **settings.generator_overrides())
        return pipeline.reverse_shard(run_store(params), ds, shard, role, settings)

    @task(outlets=[REVERSE_PROBLEMS])
    def publish(shard_results: list[dict], params=None, ds=None) -> dict:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import code_instruct as pipeline

        settings = pipeline.CodeInstructSettings(**params)
        role = run_role("generator", **settings.generator_overrides())
        return pipeline.publish_reverse(run_store(params), ds, list(shard_results), role)

    publish(reverse_construct.expand(shard=prepare_seeds()))


code_instruct()
