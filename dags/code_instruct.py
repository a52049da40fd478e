"""
### Infinite-Instruct: code instruction data

Bidirectional synthesis over real code:

1. **Reverse Construction**: seed snippets (mined from source trees or a Magicoder-OSS-Instruct
   file) become self-contained problems.
2. **Backfeeding Construction**: each problem's task / instruction / knowledge-point keywords feed
   one knowledge graph (grown night over night); connected keyword triples sampled from it become
   new problems.
3. **Quality**: the judge scores every problem on seven dimensions, three times; mean below 6 is
   rejected. Its complexity dimension is reported by origin.
4. **Responses**: the generator answers the kept problems.
5. **Static gate**: every code block of every answer goes through error-level linters (PyLint,
   ESLint, Checkstyle + javac, clang-tidy, SQLFluff, tree-sitter for the rest); a pair with any
   finding, or with no code, is rejected with its findings. The night's chat-format dataset is
   published with its funnel and the discard rate per language.

Each model stage is a mapped task over shards in the `llm` pool; each reduce task commits a stage
and hands out the next stage's shards. The logical date is the partition: a re-run or backfill
rewrites that date only. Data: `{storage_root}/code_instruct/{stage}/ds={date}/`, rejected rows
under `{storage_root}/code_instruct/rejected/{stage}/ds={date}/`. Roles: `llm_generator`,
`llm_judge` (each falling back to `llm_default`); the lint sidecar, when used: `lint_service`
(http host/port; unset = lint on the worker). See docs/LINT_GATE.md.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task

DATASET = Asset(name="code_instruct.dataset", uri="infinisynth://code_instruct/dataset")
KNOWLEDGE_GRAPH = Asset(name="code_instruct.knowledge_graph", uri="infinisynth://code_instruct/kg_nodes")

MAPPED = {
    "pool": "llm",
    "max_active_tis_per_dagrun": 4,
    "map_index_template": "{{ task.op_kwargs['shard']['stage'] }} shard {{ task.op_kwargs['shard']['shard'] }}",
}
# The gate calls no model, so it stays out of the `llm` pool; two shards at once keep linter
# processes (each gate uses every core it has) from crowding a worker.
GATE = {"max_active_tis_per_dagrun": 2, "map_index_template": "verify shard {{ task.op_kwargs['shard']['shard'] }}"}
REDUCE = {"trigger_rule": "none_failed"}  # an empty upstream (no shards) still commits


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
        "seed_source": Param(
            "mine",
            type="string",
            description="'mine' to mine snippets from seed_roots, or a Magicoder-OSS-Instruct-shaped Parquet/JSONL path",
        ),
        "seed_roots": Param(
            [], type="array", description="Source trees to mine; empty = the Python standard library and global npm modules"
        ),
        "seed_languages": Param([], type="array", description="Languages to keep (python, javascript, java, cpp, sql, ...); empty = all"),
        "max_seeds": Param(200, type="integer", minimum=1),
        "shard_size": Param(50, type="integer", minimum=1, description="Rows per mapped task"),
        "mining_seed": Param(0, type="integer", description="Random seed for snippet mining"),
        "problems_per_seed": Param(1, type="integer", minimum=1, maximum=10, description="Reverse problems per seed snippet"),
        "backfeed_ratio": Param(0.67, type="number", minimum=0, description="Backfeed problems per reverse problem (paper: 20K / 30K)"),
        "backfeed_languages": Param([], type="array", description="Target languages of backfeed problems; empty = the seeds' mix"),
        "reuse_graph": Param(True, type="boolean", description="Grow the knowledge graph from the latest earlier night's"),
        "sampling_seed": Param(0, type="integer", description="Random seed for keyword-combination sampling"),
        "quality_samples": Param(3, type="integer", minimum=1, description="Independent judge assessments averaged"),
        "quality_threshold": Param(
            6.0, type="number", minimum=1, maximum=10, description="Keep problems whose mean score is at least this"
        ),
        "min_problem_chars": Param(40, type="integer", minimum=1),
        "generator_model": Param("", type="string", description="Override the generator connection's model"),
        "generator_temperature": Param(None, type=["null", "number"], minimum=0, maximum=2),
        "generator_max_tokens": Param(None, type=["null", "integer"], minimum=1),
        "judge_model": Param("", type="string", description="Override the judge connection's model"),
        "judge_temperature": Param(None, type=["null", "number"], minimum=0, maximum=2),
        "lint_gate": Param(
            True, type="boolean", description="Discard pairs whose code has an error-level lint finding (off: publish unchecked)"
        ),
        "lint_max_code_bytes": Param(262144, type="integer", minimum=1, description="Larger code blocks fail the gate unread"),
        "lint_timeout_scale": Param(1.0, type="number", exclusiveMinimum=0, description="Multiplies every linter's time budget"),
        "score_seed_problems": Param(
            True, type="boolean", description="Judge the seeds' own problems (Magicoder files) for the complexity-by-origin report"
        ),
        "holdout_fraction": Param(
            0.05,
            type="number",
            minimum=0,
            exclusiveMaximum=1,
            description="Share of published pairs held out (by prompt hash) as the deficiency-diagnosis exam; never in the dataset",
        ),
        "storage_root": Param("", type="string", description="Object-storage URL; empty = INFINISYNTH_ROOT or data/ in the project"),
    },
)
def code_instruct():
    @task
    def prepare_seeds(params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_store
        from infinisynth.pipelines import code_instruct as p

        return p.prepare_seeds(run_store(params), ds, p.CodeInstructSettings(**params))

    @task(**MAPPED)
    def model_stage(stage: str, shard: dict, params=None, ds=None) -> dict:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import code_instruct as p

        return p.run_model_stage(run_store(params), ds, stage, shard, run_role, p.CodeInstructSettings(**params))

    @task(**REDUCE)
    def commit_stage(stage: str, results: list[dict], next_stages: list[str], params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import code_instruct as p

        store = run_store(params)
        p.commit(store, ds, stage, list(results), run_role, p.CodeInstructSettings(**params))
        return p.shards_of(store, ds, *next_stages)

    @task(**REDUCE, outlets=[KNOWLEDGE_GRAPH])
    def build_knowledge_graph(results: list[dict], params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import code_instruct as p

        store, settings = run_store(params), p.CodeInstructSettings(**params)
        p.commit(store, ds, p.KEYWORD_STAGE, list(results), run_role, settings)
        return p.plan_backfeed(store, ds, settings)

    @task(**GATE)
    def verify_responses(shard: dict, params=None, ds=None) -> dict:
        from infinisynth.airflow_env import connection_lookup, run_store
        from infinisynth.pipelines import code_instruct as p

        return p.run_verify(run_store(params), ds, shard, p.CodeInstructSettings(**params), connection_lookup)

    @task(**REDUCE, outlets=[DATASET])
    def publish(results: list[dict], params=None, ds=None) -> dict:
        from infinisynth.airflow_env import connection_lookup, run_store
        from infinisynth.pipelines import code_instruct as p

        store = run_store(params)
        p.commit_verify(store, ds, list(results), p.CodeInstructSettings(**params), connection_lookup)
        return p.publish(store, ds, p.CodeInstructSettings(**params))

    seeds = prepare_seeds()
    reverse = model_stage.override(task_id="reverse_construct").partial(stage="reverse").expand(shard=seeds)
    # The seeds' own problems (when a Magicoder file brings them) get judged too: the complexity baseline.
    seed_scores = model_stage.override(task_id="assess_seed_problems").partial(stage="seed_quality").expand(shard=seeds)
    seed_scores_committed = commit_stage.override(task_id="commit_seed_quality")(stage="seed_quality", results=seed_scores, next_stages=[])
    reverse_shards = commit_stage.override(task_id="commit_reverse")(stage="reverse", results=reverse, next_stages=["reverse"])
    keywords = model_stage.override(task_id="extract_keywords").partial(stage="keywords").expand(shard=reverse_shards)
    combinations = build_knowledge_graph(keywords)
    backfeed = model_stage.override(task_id="backfeed_construct").partial(stage="backfeed").expand(shard=combinations)
    problems = commit_stage.override(task_id="commit_backfeed")(stage="backfeed", results=backfeed, next_stages=["reverse", "backfeed"])
    scored = model_stage.override(task_id="assess_quality").partial(stage="quality").expand(shard=problems)
    kept = commit_stage.override(task_id="commit_quality")(stage="quality", results=scored, next_stages=["quality"])
    answered = model_stage.override(task_id="generate_responses").partial(stage="respond").expand(shard=kept)
    responses = commit_stage.override(task_id="commit_respond")(stage="respond", results=answered, next_stages=["respond"])
    published = publish(verify_responses.expand(shard=responses))
    seed_scores_committed >> published


code_instruct()
