"""Every DAG file imports cleanly, fast, without network and without loading the heavy library."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Parses the DAG folder with networking disabled, then reports what was imported and how long the
# DAG files themselves took (Airflow's own import time is not the DAG files' fault).
PROBE = r"""
import json, socket, sys, time
def refuse(*args, **kwargs):
    raise OSError("network access during DAG parsing")
socket.socket.connect = refuse
socket.create_connection = refuse
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(sys.argv[1])
elapsed = time.perf_counter() - started
heavy = ["pyarrow", "openai", "torch", "sentence_transformers", "networkx", "llama_cpp", "s3fs"]
# The library's declarations (specs, Params, the task builder) are light; everything else waits for a task.
light = {"infinisynth", "infinisynth.spec", "infinisynth.specs", "infinisynth.airflow_dag"}
heavy += [m for m in sys.modules if m.startswith("infinisynth.") and m not in light and not m.startswith("infinisynth.specs.")]

def defaults(dag):
    # What the trigger form starts from: every Param's default, and whether they validate as they are.
    params = {k: dag.params.get_param(k) for k in dag.params}
    values = {k: p.value for k, p in params.items() if type(p.value).__name__ != "ArgNotSet"}  # required ones have none
    try:
        dag.params.validate()
        valid = True
    except Exception:
        valid = False
    return values, valid

print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {dag_id: {"tasks": [t.task_id for t in dag.tasks], "schedule": str(dag.schedule),
                       "catchup": dag.catchup, "params": sorted(dag.params.keys()), "tags": sorted(dag.tags),
                       "defaults": defaults(dag)[0], "defaults_valid": defaults(dag)[1]}
             for dag_id, dag in bag.dags.items()},
    "seconds": elapsed,
    "heavy_imported": [m for m in heavy if m in sys.modules],
}))
"""


def parse_dags() -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / "dags")],
        capture_output=True,
        text=True,
        timeout=120,
        # A throwaway Airflow home: parsing must not leave an airflow/ folder in the project.
        env={"PATH": "/usr/bin:/bin", "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "HOME": str(REPO), "AIRFLOW_HOME": tempfile.mkdtemp()},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dag_files_import_quickly_without_network_or_heavy_imports():
    report = parse_dags()
    assert report["errors"] == {}
    assert report["seconds"] < 5, f"parsing the DAG folder took {report['seconds']:.1f}s"
    assert report["heavy_imported"] == [], "DAG files must import the library inside tasks only"


def test_code_instruct_dag_shape():
    dag = parse_dags()["dags"]["code_instruct"]
    # Two chains stream in one mapped task each: reverse -> keywords (committed by the graph
    # build) and quality -> respond -> verify -> write_tests -> execute (committed by publish).
    # Seed-problem scoring runs beside reverse construction, in its tasks.
    assert set(dag["tasks"]) == {
        "prepare_seeds",
        "reverse_construct",
        "build_knowledge_graph",
        "backfeed_construct",
        "commit_backfeed",
        "assess_quality",
        "publish",
    }
    assert dag["catchup"] is False
    assert dag["schedule"] == "@daily"
    for param in (
        "max_seeds",
        "shard_size",
        "seed_source",
        "problems_per_seed",
        "backfeed_ratio",
        "quality_samples",
        "quality_threshold",
        "generator_model",
        "judge_model",
        "storage_root",
        "lint_gate",
        "lint_max_code_bytes",
        "lint_timeout_scale",
        "test_gate",
    ):
        assert param in dag["params"]


# Each DAG's Params are generated from its pipeline's settings model: one declaration per knob.
SETTINGS = {
    "code_instruct": ("infinisynth.specs.code_instruct", "CodeInstructSettings"),
    "subject_instruct": ("infinisynth.specs.subject_instruct", "SubjectSettings"),
    "deficiency_diagnosis": ("infinisynth.specs.deficiency_diagnosis", "DiagnosisSettings"),
    "register_model": ("infinisynth.specs.deficiency_diagnosis", "ModelRegistration"),
    "release": ("infinisynth.specs.release", "ReleaseSettings"),
}


def test_every_dags_params_are_its_settings_fields_with_their_defaults():
    import importlib

    dags = parse_dags()["dags"]
    assert set(dags) == set(SETTINGS)
    for dag_id, (module, name) in SETTINGS.items():
        model = getattr(importlib.import_module(module), name)
        assert dags[dag_id]["params"] == sorted(model.model_fields), dag_id
        expected = {k: f.get_default(call_default_factory=True) for k, f in model.model_fields.items() if not f.is_required()}
        assert dags[dag_id]["defaults"] == expected, dag_id


def test_the_trigger_form_accepts_every_pipelines_defaults():
    """A DAG whose default Params do not validate has a disabled Trigger button in the UI."""
    dags = parse_dags()["dags"]
    for dag_id in ("code_instruct", "subject_instruct", "deficiency_diagnosis", "release"):
        assert dags[dag_id]["defaults_valid"], dag_id
    assert not dags["register_model"]["defaults_valid"]  # it asks for the model's endpoint and id


def test_release_dag_shape():
    """Built from the pipelines' dataset assets, runnable by hand for a date range."""
    dag = parse_dags()["dags"]["release"]
    assert dag["tasks"] == ["gather_candidates", "deduplicate", "decontaminate", "export_release"]
    for asset in ("code_instruct.dataset", "subject_instruct.dataset", "diagnosis.dataset"):
        assert asset in dag["schedule"]
    for param in ("start_date", "end_date", "version", "semantic_duplicate_threshold", "decontam_ngram", "decontam_max_cosine", "license"):
        assert param in dag["params"]
    assert dag["defaults"]["benchmarks"] == ["humaneval"] and dag["defaults"]["decontam_ngram"] == 13
