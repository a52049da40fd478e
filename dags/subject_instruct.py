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

Each model stage is a mapped task over shards in the `llm` pool (declared in
`infinisynth.specs.subject_instruct`; Params: the fields of `SubjectSettings`). Data:
`{storage_root}/subject_instruct/{stage}/ds={date}/`, rejected rows under
`{storage_root}/subject_instruct/rejected/{stage}/ds={date}/`, the report in the `dataset`
partition's folder. Roles: `llm_tagger`, `llm_base` (a completions endpoint returning prompt
log-probabilities), `llm_generator`, `llm_oracle`, `llm_judge`, each falling back to `llm_default`.
"""

from __future__ import annotations

from airflow.sdk import Asset

from infinisynth.airflow_dag import pipeline_dag
from infinisynth.specs.subject_instruct import SPEC

DATASET = Asset(name="subject_instruct.dataset", uri="infinisynth://subject_instruct/dataset")
VOCABULARY = Asset(name="subject_instruct.tag_vocabulary", uri="infinisynth://subject_instruct/tag_vocabulary")
SEEDS = Asset(name="subject_instruct.seeds", uri="infinisynth://subject_instruct/seeds")

dag = pipeline_dag(
    SPEC,
    dag_id="subject_instruct",
    schedule="@daily",
    tags=["infinity-instruct-subject", "general"],
    doc_md=__doc__,
    outlets={"tags": [VOCABULARY], "seeds": [SEEDS], "dataset": [DATASET]},
)
