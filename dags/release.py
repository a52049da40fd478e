"""
### Release for training: deduplicated, decontaminated, a Hugging Face dataset with its card

Builds one versioned release from the datasets of `code_instruct`, `subject_instruct` and
`deficiency_diagnosis` whose dates fall in `[start_date, end_date]` (defaults: the day after the
previous release's end, and the run's date):

1. **gather_candidates**: every published row, in one schema (messages + origin, lang, tags,
   domains, scores, parent ids), plus the rows variants reach for (answered below the publish
   threshold, rejected by the lint gate).
2. **deduplicate**: exact (normalized instruction), near (MinHash LSH) and semantic (MiniLM
   nearest neighbours in a usearch index), within the release and against every other release.
3. **decontaminate**: prompts and responses against HumanEval and the benchmark files named by
   the `benchmark_files` Param or the `release_benchmarks` Variable: word 13-grams and embedding
   similarity. An unreadable benchmark fails the run.
4. **export_release**: `{storage_root}/releases/{version}/` with `data/` shards, `variants/`,
   `README.md` (the dataset card), `sft_config.yaml` (`trl sft --config`), `report.json` (every
   dropped row with its method and counterpart, or benchmark and item); optional Hub push (token:
   password of the `hub_conn_id` connection).

Scheduled when both nightly pipelines have published (or a diagnosis iteration has); trigger it
by hand with `start_date`/`end_date` for any range. Params: the fields of `ReleaseSettings`.
"""

from __future__ import annotations

from airflow.sdk import Asset

from infinisynth.airflow_dag import pipeline_dag
from infinisynth.specs.release import SPEC

CODE = Asset(name="code_instruct.dataset", uri="infinisynth://code_instruct/dataset")
SUBJECT = Asset(name="subject_instruct.dataset", uri="infinisynth://subject_instruct/dataset")
DIAGNOSIS = Asset(name="diagnosis.dataset", uri="infinisynth://diagnosis/dataset")
RELEASE = Asset(name="release.published", uri="infinisynth://release/release")

dag = pipeline_dag(
    SPEC,
    dag_id="release",
    schedule=(CODE & SUBJECT) | DIAGNOSIS,
    tags=["release", "training"],
    doc_md=__doc__,
    outlets={"release": [RELEASE]},
)
