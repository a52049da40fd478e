"""The subject DAG, run for real with ``airflow dags test`` against the scripted server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from infinisynth.settings import store_for
from infinisynth.subject.vocabulary import latest_vocabulary_before
from tests.support.fixtures import connection_env
from tests.test_dag_integrity import parse_dags

DS = "2026-02-03"
COMMON = ["photosynthesis", "plant biology"]
# (marker, instruction, tags the scripted tagger gives it)
POOL = [
    ("MARK_A", "Explain how photosynthesis works in C4 plants.", COMMON),
    ("MARK_B", "Write a sonnet about the first frost of autumn.", ["poetry"]),  # a unique tag: long tail
    (
        "MARK_C",
        "Plan a household budget with compound interest and taxes.",
        ["budgeting", "compound interest", "tax law", "spreadsheets", "arithmetic"],
    ),  # 5 tags: multi-skill
    ("MARK_D", "Why are leaves green in summer?", COMMON),
    ("MARK_E", "How do chloroplasts capture light energy?", COMMON),
    ("MARK_F", "Describe the Calvin cycle step by step.", COMMON),
    ("MARK_G", "Compare three sorting algorithms on nearly sorted data.", ["sorting algorithms"]),  # long tail, evolves cleanly
]
PROMPT_WORDS = "Keep it short. Do not mention the original, the operation or these guidelines."


def pool_file(directory: Path) -> Path:
    rows = [{"instruction": f"{m}: {text}", "response": f"A careful answer about {text.lower()}"} for m, text, _ in POOL]
    rows.append({"instruction": "", "response": "an answer without a question"})  # not a pool row: rejected with a reason
    path = directory / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# The scripted "user" asks one follow-up per kind (a conversation never asks a kind twice).
FOLLOWUPS = {
    'Start with "Can you show"': "Can you show it for one concrete case?",
    'Start with "What happens if"': "What happens if the input is empty?",
    'Start with "Is there another way"': "Is there another way to get there?",
    'Start with "Why"': "Why is the second step needed?",
    'Start with "How would you change"': "How would you change it for a beginner?",
}


def rules() -> list[dict]:
    tagging = [
        {
            "match": ["List the fine-grained tags", marker],
            "actions": [{"json": {"tags": [{"tag": t, "explanation": "needed"} for t in tags]}}],
        }
        for marker, _, tags in POOL
    ]
    return [
        # Evolution of B copies the evolution prompt's own words; of C, gives an unanswerable task.
        {"match": ["Original instruction:", "MARK_B"], "actions": [{"json": {"instruction": f"A sonnet. {PROMPT_WORDS}"}}]},
        {
            "match": ["Original instruction:", "MARK_C"],
            "actions": [{"json": {"instruction": "UNANSWERABLE_marker: use the attached ledger to plan the budget."}}],
        },
        {
            "match": ["Rewritten:", "UNANSWERABLE_marker"],
            "actions": [{"json": {"adds_information": True, "answerable": False, "explanation": "the ledger is not attached"}}],
        },
        # Seeds are rated easy; evolved instructions get the scripted default (7).
        {
            "match": ["Rate its difficulty", "MARK_"],
            "name": "seed-difficulty",
            "actions": [{"json": {"difficulty": 3, "rationale": "easy"}}],
        },
        *tagging,
        *({"match": ["Write follow-up message", opener], "actions": [{"json": {"question": q}}]} for opener, q in FOLLOWUPS.items()),
    ]


@pytest.mark.slow
def test_full_pipeline_tags_selects_evolves_and_publishes_with_its_report(airflow_home, scripted, tmp_path):
    scripted.reset()
    scripted.script(rules())
    root = f"file://{tmp_path / 'data'}"
    env = {**connection_env(scripted.base_url, max_invalid_retries=1), "INFINISYNTH_ROOT": root}
    conf = {
        "pool_source": str(pool_file(tmp_path)),
        "shard_size": 3,
        "noise_floor": 1,
        "long_tail_frequency": 2,
        "generations": 2,
        "max_followups": 2,
        "max_seeds": 100,
    }

    output = airflow_home.dags_test("subject_instruct", DS, conf, env)

    store = store_for(root)
    table = lambda stage: store.partition("subject_instruct", stage, DS).read().to_pylist()  # noqa: E731
    rejected = lambda stage: store.rejected("subject_instruct", stage, DS).read().to_pylist()  # noqa: E731
    exists = lambda stage: store.partition("subject_instruct", stage, DS).exists()  # noqa: E731

    # Pool and tagging: every row accounted for, the vocabulary saved for the next night.
    assert len(table("pool")) == 7 and [r["reason"] for r in rejected("pool")] == ["no_instruction"]
    assert len(table("tagging")) == 7
    assert latest_vocabulary_before(store, "2026-02-04") is not None

    # Selection: each seed carries its reasons; the tag-based criteria pick exactly what the tags say.
    seeds = {s["instruction"].split(":")[0]: s for s in table("seeds")}
    assert all(s["selection_reasons"] and s["origin"] == "seed" and s["generation"] == 0 for s in seeds.values())
    assert any("long_tail" in r for r in seeds["MARK_B"]["selection_reasons"])
    assert any("multi_skill" in r for r in seeds["MARK_C"]["selection_reasons"])
    assert any("long_tail" in r for r in seeds["MARK_G"]["selection_reasons"])
    for marker in ("MARK_A", "MARK_D", "MARK_E", "MARK_F"):
        reasons = seeds[marker]["selection_reasons"] if marker in seeds else []
        assert not any("long_tail" in r or "multi_skill" in r for r in reasons)
    selection = store.partition("subject_instruct", "seeds", DS).manifest().meta["selection"]
    assert selection  # the per-criterion counts and overlaps

    # Two generations ran, two were skipped; each oracle failure has its reason.
    assert all(exists(s) for s in ("evolve_g1", "oracle_g1", "evolve_g2", "oracle_g2"))
    assert not any(exists(s) for s in ("evolve_g3", "oracle_g3", "evolve_g4", "oracle_g4"))
    assert len(table("evolve_g1")) + len(rejected("evolve_g1")) == len(seeds)
    oracle_reasons = {r["reason"] for r in rejected("oracle_g1")}
    assert {"copies_evolution_prompt", "unanswerable"} <= oracle_reasons
    survivors_g1 = table("oracle_g1")
    assert len(table("evolve_g2")) + len(rejected("evolve_g2")) == len(survivors_g1)
    g2 = table("oracle_g2")
    assert all(r["generation"] == 2 and len(r["lineage"]) == 2 and r["lineage"][0]["operation"] != r["lineage"][1]["operation"] for r in g2)

    # Responses for every survivor, multi-turn from the pairs, one published row per answered pair.
    answered = table("respond")
    assert len(answered) + len(rejected("respond")) == len(survivors_g1) + len(g2)
    dataset = table("dataset")
    assert len(dataset) == len(answered) > 0
    for row in dataset:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (1 + row["followups"]) and row["followups"] <= 2
        assert row["messages"][0]["content"] == row["instruction"] and row["messages"][1]["content"] == row["response"]
        assert row["origin"] in {"evolved", "multiturn"} and row["tags"] and row["selection_reasons"]
        assert row["seed_instruction"] and len(row["lineage"]) == row["generation"] and row["seed_difficulty"] == 3
    assert any(r["origin"] == "multiturn" for r in dataset)

    # The report beside the dataset: coverage, the degree distribution and its plot, difficulty.
    meta = store.partition("subject_instruct", "dataset", DS).manifest().meta
    folder = f"{store.root}/subject_instruct/reports/ds={DS}"
    report = store.read_json(f"{folder}/report.json")
    assert report["pool"]["rows"] == 7 and report["pool"]["tags_per_domain"]
    assert report["pool"]["network"]["tags"] >= 2 and "power_law" in report["pool"]["network"]
    assert report["difficulty"]["before"]["mean"] == 3 and report["difficulty"]["after"]["mean"] == 7
    assert meta["difficulty"] == report["difficulty"] and meta["sft"]["learning_rate"] == 2e-5
    assert report["selection"]["seeds"] == len(seeds) and report["selection"]["criteria"]["multi_skill"]["rows"] == 1
    assert "seed selection:" in output
    for name in meta["plots"]:
        assert Image.open(io.BytesIO(store.fs.cat_file(f"{folder}/{name}"))).format == "PNG"
    assert "coverage and depth report" in output and "tags per domain" in output and "difficulty before evolution 3.0" in output
    stages = [entry["stage"] for entry in meta["funnel"]]
    assert stages[:3] == ["pool", "tagging", "losses"] and stages[-3:] == ["respond", "difficulty_evolved", "multiturn"]
    for entry in meta["funnel"]:
        if entry["stage"] != "seeds":  # selection picks from the pool; it does not reject
            assert entry["inputs_passed"] + entry["rejected"] == entry["rows_in"]
    assert "sk-test-SECRET-dag" not in output and "sk-test-SECRET-dag" not in json.dumps(meta)

    # A re-run of the same date rewrites its partitions with the same ids.
    airflow_home.dags_test("subject_instruct", DS, conf, env)
    assert sorted(r["id"] for r in table("dataset")) == sorted(r["id"] for r in dataset)


PAPER_DEFAULTS = {
    "merge_similarity": 0.91,
    "cluster_eps": 0.47,
    "noise_floor": 100,
    "domains": 25,
    "long_tail_frequency": 200,
    "multi_skill_tags": 4,
    "loss_z": 1.96,
    "min_followups": 1,
    "max_followups": 4,
}


def test_dag_shape_and_every_threshold_a_param_with_the_papers_default():
    from airflow.dag_processing.dagbag import DagBag

    from infinisynth.pipelines.subject import MAX_GENERATIONS, SubjectSettings

    shape = parse_dags()["dags"]["subject_instruct"]
    assert shape["schedule"] == "@daily" and shape["catchup"] is False
    generation_tasks = {f"{kind}_g{g}" for g in range(1, MAX_GENERATIONS + 1) for kind in ("evolve", "commit")}
    assert generation_tasks | {"prepare_pool", "tag_instructions", "normalize_tags", "score_losses", "select_seeds", "publish"} <= set(
        shape["tasks"]
    )
    dag = DagBag(str(Path(__file__).resolve().parents[1] / "dags" / "subject_instruct.py")).get_dag("subject_instruct")
    defaults = {name: dag.params[name] for name in shape["params"]}
    for name, value in PAPER_DEFAULTS.items():
        assert defaults[name] == value, name
    # The task bodies validate Params with the same defaults.
    settings = SubjectSettings().model_dump()
    assert all(settings[name] == value for name, value in defaults.items() if name in settings and value not in ("", None))
    assert {t.task_id for t in dag.tasks if getattr(t, "pool", None) == "llm"} >= {
        "tag_instructions",
        "score_losses",
        "evolve_g1",
        "generate_responses",
        "extend_multiturn",
    }


def test_row_tags_join_by_id_and_rows_without_tags_get_empty_lists():
    import pyarrow as pa

    from infinisynth.pipelines.subject import tags_schema, with_row_tags
    from infinisynth.subject.tagging import TAGGED_SCHEMA

    tagged = pa.Table.from_pylist(
        [
            {
                "id": i,
                "parent_ids": [],
                "origin": "seed",
                "instruction": "q",
                "response": "a",
                "messages": [{"role": "user", "content": "q"}],
                "source": "s",
                "source_id": i,
                "raw_tags": [{"tag": "t", "explanation": ""}],
            }
            for i in ("a", "b", "c")
        ],
        schema=TAGGED_SCHEMA,
    )
    row_tags = pa.table({"id": ["c", "a"], "tags": [["t1", "t2"], ["t3"]], "domains": [["d1"], ["d2"]]})
    joined = with_row_tags(tagged, row_tags)
    assert joined.schema.equals(tags_schema())
    assert joined.select(["id", "tags", "domains"]).to_pylist() == [
        {"id": "a", "tags": ["t3"], "domains": ["d2"]},
        {"id": "b", "tags": [], "domains": []},
        {"id": "c", "tags": ["t1", "t2"], "domains": ["d1"]},
    ]
    assert with_row_tags(tagged, row_tags.slice(0, 0)).column("tags").to_pylist() == [[], [], []]
