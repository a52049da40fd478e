"""Infinite-Instruct: synthesize code instruction data (reverse + backfeeding construction).

Steps, each a task over Parquet partitions of the run's logical date (declared in
`infinisynth.specs.code_instruct`):

1. **prepare_seeds**: mine code snippets (or read a Magicoder-OSS-Instruct-shaped file).
2. **reverse_construct** (mapped over shards): each snippet -> self-contained programming problems,
   streamed row by row into keyword extraction (task, instruction and knowledge keywords); beside
   them, a seed file's own problems are judged for the complexity-by-origin report.
3. **build_knowledge_graph**: commits both; keywords -> knowledge graph (grown night over night)
   -> keyword combinations sampled from connected triples.
4. **backfeed_construct**: each combination -> a new problem with stronger internal logic.
5. **assess_quality** (mapped): 7 dimensions x 3 independent judge samples (mean < threshold is
   rejected), each kept problem streamed on into its answer, the static lint gate (micro-batches,
   error-level findings discard the pair) and, with `test_gate` on, tests and the sandboxed run.
6. **publish**: commits that chain; chat-format dataset + the night's funnel, complexity by origin
   and held-out slice.

Connections: `llm_generator`, `llm_judge` (fallback `llm_default`): host = OpenAI-compatible base URL,
password = API key, extra = model, structured_output, limits. Object storage: `infinisynth_s3`
when `storage_root` is `s3://...`. Lint sidecar, when used: `lint_service` (http host/port; unset =
lint on the worker). See docs/LINT_GATE.md. Params: the fields of `CodeInstructSettings`.
"""

from __future__ import annotations

from airflow.sdk import Asset

from infinisynth.airflow_dag import pipeline_dag
from infinisynth.specs.code_instruct import SPEC

DATASET = Asset(name="code_instruct.dataset", uri="infinisynth://code_instruct/dataset")
KNOWLEDGE_GRAPH = Asset(name="code_instruct.knowledge_graph", uri="infinisynth://code_instruct/kg_nodes")

dag = pipeline_dag(
    SPEC,
    dag_id="code_instruct",
    schedule="@daily",
    tags=["infinite-instruct", "code"],
    doc_md=__doc__,
    outlets={"combinations": [KNOWLEDGE_GRAPH], "dataset": [DATASET]},
)
