"""
### Infinity Instruct Subject: general instruction data

Over any instruction pool (the code pipeline's latest dataset, or a Parquet/JSONL file with
`messages` or instruction/response columns):

1. **Hierarchical tagging**: the tagger gives each instruction fine-grained tags with explanations;
   tags are normalized over the whole pool (lemmatized, near-synonyms merged at `merge_similarity`,
   clustered at `cluster_eps`, tags rarer than `noise_floor` dropped) and mapped to about `domains`
   domain categories, kept in a versioned vocabulary that grows night over night.
2. **Informative seeds**: long-tail tags (frequency below `long_tail_frequency`), multi-skill
   (more than `multi_skill_tags` tags), undertrained (base-model loss above mean + `loss_z` std) and
   hard-to-follow (low loss reduction), each reason recorded on the row.
3. **Evolution**, `generations` deep: add reasoning, concretize, deepen or widen (in-breadth), guided
   by the seed's tags; an oracle check rejects rewrites that add nothing, cannot be answered or copy
   the evolution prompt; survivors are answered and extended into 1-4 follow-up rounds.
4. **Publish**: chat `messages` rows with tags, domains, selection reasons and lineage; a coverage
   and depth report (tags per domain, tag co-occurrence degree distribution with its power-law
   exponent and a log-log plot, difficulty before and after evolution) beside the dataset.

Each model stage is a mapped task over shards in the `llm` pool. Data:
`{storage_root}/subject_instruct/{stage}/ds={date}/`, rejected rows under
`{storage_root}/subject_instruct/rejected/{stage}/ds={date}/`, the report in the `dataset`
partition's folder. Roles: `llm_tagger`, `llm_base` (a completions endpoint returning prompt
log-probabilities), `llm_generator`, `llm_oracle`, `llm_judge`, each falling back to `llm_default`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task

DATASET = Asset(name="subject_instruct.dataset", uri="infinisynth://subject_instruct/dataset")
VOCABULARY = Asset(name="subject_instruct.tag_vocabulary", uri="infinisynth://subject_instruct/tag_vocabulary")
SEEDS = Asset(name="subject_instruct.seeds", uri="infinisynth://subject_instruct/seeds")

MAX_GENERATIONS = 4  # wired generation steps; the `generations` Param decides how many run

MAPPED = {
    "pool": "llm",
    "max_active_tis_per_dagrun": 4,
    "map_index_template": "{{ task.op_kwargs['shard']['stage'] }} shard {{ task.op_kwargs['shard']['shard'] }}",
}
REDUCE = {"trigger_rule": "none_failed"}  # an empty or skipped upstream (no shards) still runs


@dag(
    dag_id="subject_instruct",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["infinity-instruct-subject", "general"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "pool_source": Param(
            "code_instruct",
            type="string",
            description="'code_instruct' (that pipeline's latest dataset at or before the date) or a Parquet/JSONL path/URL with messages or instruction/response columns",
        ),
        "max_pool_rows": Param(0, type="integer", minimum=0, description="Cap on pool rows; 0 = the whole pool"),
        "shard_size": Param(200, type="integer", minimum=1, description="Rows per mapped task"),
        "merge_similarity": Param(
            0.91,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            description="Merge tags whose embedding cosine similarity is at least this (paper: lambda 0.91)",
        ),
        "cluster_eps": Param(0.47, type="number", exclusiveMinimum=0, description="Tag clustering radius (paper: eps 0.47)"),
        "noise_floor": Param(100, type="integer", minimum=1, description="Drop tags rarer than this over the pool (paper: 100)"),
        "domains": Param(25, type="integer", minimum=1, description="Domain categories tags are mapped to (paper: 25)"),
        "long_tail_frequency": Param(
            200, type="integer", minimum=1, description="Long-tail seed: carries a tag rarer than this (paper: 200)"
        ),
        "multi_skill_tags": Param(4, type="integer", minimum=0, description="Multi-skill seed: more tags than this (paper: 4)"),
        "loss_z": Param(
            1.96, type="number", minimum=0, description="Undertrained seed: base loss above mean + this many std (paper: 1.96)"
        ),
        "hard_to_follow_quantile": Param(
            0.1,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            description="Hard-to-follow seed: loss reduction in this lowest share of the pool",
        ),
        "max_seeds": Param(1000, type="integer", minimum=1, description="Seeds evolved per night (most selection reasons first)"),
        "generations": Param(
            3,
            type="integer",
            minimum=1,
            maximum=MAX_GENERATIONS,
            description="Evolution generations, each over the previous one's survivors",
        ),
        "copy_ngram_words": Param(
            6, type="integer", minimum=2, description="Oracle: a run of this many words copied from the evolution prompt rejects a rewrite"
        ),
        "oracle_verdict": Param(
            True,
            type="boolean",
            description="Ask the oracle whether each rewrite adds information and is answerable; off = the deterministic checks only (tiny demo models)",
        ),
        "min_followups": Param(1, type="integer", minimum=1, maximum=4, description="Multi-turn: fewest follow-up rounds (paper: 1)"),
        "max_followups": Param(4, type="integer", minimum=1, maximum=4, description="Multi-turn: most follow-up rounds (paper: 4)"),
        "difficulty_samples": Param(1, type="integer", minimum=1, description="Judge ratings averaged per difficulty score"),
        "sampling_seed": Param(0, type="integer", description="Random seed for evolution operations and follow-up counts"),
        "tagger_model": Param("", type="string", description="Override the tagger connection's model"),
        "base_model": Param("", type="string", description="Override the base (loss) connection's model"),
        "generator_model": Param("", type="string", description="Override the generator connection's model"),
        "generator_temperature": Param(None, type=["null", "number"], minimum=0, maximum=2),
        "generator_max_tokens": Param(None, type=["null", "integer"], minimum=1),
        "oracle_model": Param("", type="string", description="Override the oracle connection's model"),
        "judge_model": Param("", type="string", description="Override the judge connection's model"),
        "storage_root": Param("", type="string", description="Object-storage URL; empty = INFINISYNTH_ROOT or data/ in the project"),
    },
)
def subject_instruct():
    @task
    def prepare_pool(params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_store
        from infinisynth.pipelines import subject as p

        return p.prepare_pool(run_store(params), ds, p.SubjectSettings(**params))

    @task(**MAPPED)
    def model_stage(stage: str, shard: dict, params=None, ds=None) -> dict:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import subject as p

        return p.run_model_stage(run_store(params), ds, stage, shard, run_role, p.SubjectSettings(**params))

    @task(**REDUCE)
    def commit_stage(stage: str, results: list[dict], next_stages: list[str], params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import subject as p

        store = run_store(params)
        p.commit(store, ds, stage, list(results), run_role, p.SubjectSettings(**params))
        return p.shards_of(store, ds, *next_stages)

    @task(**REDUCE, outlets=[VOCABULARY])
    def normalize_tags(results: list[dict], params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import subject as p

        store, settings = run_store(params), p.SubjectSettings(**params)
        p.commit(store, ds, p.TAGGING_STAGE, list(results), run_role, settings)
        return p.normalize_tags(store, ds, settings)

    @task(**REDUCE, outlets=[SEEDS])
    def select_seeds(results: list[dict], params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import subject as p

        store, settings = run_store(params), p.SubjectSettings(**params)
        p.commit(store, ds, p.LOSS_STAGE, list(results), run_role, settings)
        return p.select(store, ds, settings)

    @task(**MAPPED)
    def evolve(generation: int, shard: dict, params=None, ds=None) -> dict:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import subject as p

        return p.run_generation(run_store(params), ds, generation, shard, run_role, p.SubjectSettings(**params))

    @task(**REDUCE)
    def commit_generation(generation: int, results: list[dict], params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import subject as p

        return p.commit_generation(run_store(params), ds, generation, list(results), run_role, p.SubjectSettings(**params))

    @task(**REDUCE)
    def collect_survivors(last_generation: list[dict], params=None, ds=None) -> list[dict]:
        from infinisynth.airflow_env import run_store
        from infinisynth.pipelines import subject as p

        return p.survivors(run_store(params), ds, p.SubjectSettings(**params))

    @task(**REDUCE, outlets=[DATASET])
    def publish(conversations: list[dict], difficulty: list[dict], seed_difficulty: list[dict], params=None, ds=None) -> dict:
        from infinisynth.airflow_env import run_role, run_store
        from infinisynth.pipelines import subject as p

        store, settings = run_store(params), p.SubjectSettings(**params)
        p.commit(store, ds, p.MULTITURN_STAGE, list(conversations), run_role, settings)
        p.commit(store, ds, p.EVOLVED_DIFFICULTY_STAGE, list(difficulty), run_role, settings)
        return p.publish(store, ds, settings)

    tagged = model_stage.override(task_id="tag_instructions").partial(stage="tagging").expand(shard=prepare_pool())
    normalized = normalize_tags(tagged)
    losses = model_stage.override(task_id="score_losses").partial(stage="losses").expand(shard=normalized)
    seeds = select_seeds(losses)

    seed_scores = model_stage.override(task_id="score_seed_difficulty").partial(stage="difficulty_seeds").expand(shard=seeds)
    seed_scores_done = commit_stage.override(task_id="commit_seed_difficulty")(
        stage="difficulty_seeds", results=seed_scores, next_stages=[]
    )

    parents = seeds
    for generation in range(1, MAX_GENERATIONS + 1):
        evolved = evolve.override(task_id=f"evolve_g{generation}").partial(generation=generation).expand(shard=parents)
        parents = commit_generation.override(task_id=f"commit_g{generation}")(generation=generation, results=evolved)

    answered = model_stage.override(task_id="generate_responses").partial(stage="respond").expand(shard=collect_survivors(parents))
    pairs = commit_stage.override(task_id="commit_responses")(stage="respond", results=answered, next_stages=["respond"])
    evolved_scores = model_stage.override(task_id="score_evolved_difficulty").partial(stage="difficulty_evolved").expand(shard=pairs)
    conversations = model_stage.override(task_id="extend_multiturn").partial(stage="multiturn").expand(shard=pairs)
    publish(conversations, evolved_scores, seed_scores_done)


subject_instruct()
