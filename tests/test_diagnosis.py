"""The diagnosis loop's parts: held-out split, diagnosis sets, leakage, abstraction, ranking, plan."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from infinisynth.diagnosis import aggregate, diagnose, targeted
from infinisynth.diagnosis.diagnosis_set import BenchmarkOverlap, DiagnosisSetError, holdout_set, refuse_benchmarks, user_set
from infinisynth.diagnosis.leakage import LeakageSettings, closest, ngram_overlaps
from infinisynth.holdout import bucket, holdout_fraction, split_holdout, write_holdout
from infinisynth.pipelines.diagnosis import DiagnosisSettings, registration_extra, resolve_target
from infinisynth.settings import role_config, store_for
from infinisynth.stages.publish import DATASET_SCHEMA

PROMPT = "Write a Python function that returns the second largest distinct value in a list of integers, or None if there is no such value."
PARAPHRASE = "Implement a Python function which gives back the second-biggest unique number from an integer list, returning None when it does not exist."
UNRELATED = "Design a function that merges overlapping time intervals and returns them sorted by start time; handle empty input and single intervals."


def chat_table(n: int) -> pa.Table:
    rows = [
        {
            "id": f"row{i}",
            "parent_ids": [],
            "origin": "reverse",
            "lang": "python",
            "messages": [{"role": "user", "content": f"problem number {i}"}, {"role": "assistant", "content": f"answer {i}"}],
            "problem": f"problem number {i}",
            "response": f"answer {i}",
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=DATASET_SCHEMA)


# -- held-out slice ------------------------------------------------------------------------------


def test_holdout_split_is_deterministic_disjoint_and_near_the_fraction():
    table = chat_table(2000)
    train, held = split_holdout(table, 0.1)
    assert train.num_rows + held.num_rows == 2000
    assert not set(train.column("id").to_pylist()) & set(held.column("id").to_pylist())
    assert 150 <= held.num_rows <= 250  # 10% of 2000, within sampling noise
    again_train, again_held = split_holdout(table.slice(0, 1000), 0.1)  # a row's side never depends on the others
    assert set(again_held.column("id").to_pylist()) == {i for i in held.column("id").to_pylist() if int(i[3:]) < 1000}
    assert bucket("  problem   number 3 ") == bucket("problem number 3")  # whitespace does not move a row
    assert split_holdout(table, 0.0)[1].num_rows == 0


def test_holdout_fraction_setting(monkeypatch):
    monkeypatch.setenv("INFINISYNTH_HOLDOUT_FRACTION", "0.2")
    assert holdout_fraction() == 0.2
    assert holdout_fraction(0.05) == 0.05
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        holdout_fraction(1.5)


def test_diagnosis_set_reads_the_latest_holdout_at_or_before_the_date(tmp_path):
    store = store_for(f"file://{tmp_path}")
    table = chat_table(400)
    _, held = split_holdout(table, 0.1)
    write_holdout(store, "code_instruct", "2026-01-01", held)
    write_holdout(store, "code_instruct", "2026-03-01", held.slice(0, 1))
    rows, rejected = holdout_set(store, "2026-02-01")
    assert rows.num_rows == held.num_rows and rejected == []
    first = rows.to_pylist()[0]
    assert first["prompt"].startswith("problem number") and first["reference"].startswith("answer")
    assert holdout_set(store, "2026-03-05")[0].num_rows == 1
    with pytest.raises(DiagnosisSetError, match="no held-out slice of code_instruct at or before 2025-12-31"):
        holdout_set(store, "2025-12-31")


def test_user_set_rejects_bad_rows_with_reasons_and_bad_files_with_errors(tmp_path):
    path = tmp_path / "set.jsonl"
    rows = [
        {"prompt": "Reverse a linked list in place.", "reference": "def rev(h): ..."},
        {"prompt": "", "reference": "x"},
        {"prompt": "Count words in a text.", "reference": ""},
        {"prompt": "Reverse  a linked list in place.", "reference": "again"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, rejected = user_set(str(path))
    assert table.num_rows == 1
    assert [r["reason"] for r in rejected] == ["missing_prompt", "missing_reference", "duplicate_prompt"]
    assert all(r["input_json"] for r in rejected)  # nothing is lost

    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "reference": "b"}\n{not json\n')
    with pytest.raises(DiagnosisSetError, match="line 2: not JSON"):
        user_set(str(tmp_path / "broken.jsonl"))
    (tmp_path / "wrong.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(DiagnosisSetError, match="needs 'prompt' and 'reference'"):
        user_set(str(tmp_path / "wrong.jsonl"))
    with pytest.raises(DiagnosisSetError, match="no such file"):
        user_set(str(tmp_path / "missing.parquet"))


# -- leakage -------------------------------------------------------------------------------------


def test_leakage_catches_a_paraphrase_by_embedding_and_a_copy_by_ngrams():
    settings = LeakageSettings()
    paraphrase, unrelated = closest([PARAPHRASE, UNRELATED], [PROMPT], settings)
    assert paraphrase.too_close(settings) == "embedding" and paraphrase.cosine >= 0.8
    assert unrelated.too_close(settings) is None and unrelated.cosine < 0.6
    pasted = "Here is a task for you. " + PROMPT + " Also explain the running time in detail with examples."
    [(overlap, ref)] = ngram_overlaps([pasted], [UNRELATED, PROMPT], 5)
    assert overlap == 1.0 and ref == 1
    copy = closest([pasted], [PROMPT], settings.model_copy(update={"max_cosine": 1.0}))[0]
    assert copy.too_close(settings.model_copy(update={"max_cosine": 1.0})) == "ngram"


def test_a_diagnosis_set_overlapping_humaneval_is_refused(tmp_path):
    path = tmp_path / "set.jsonl"
    rows = [
        {
            "prompt": "Write a Python function that returns the second smallest element of a list of integers, or None if there is none.",
            "reference": "...",
        },
        {
            "prompt": "Write a Python function that converts a duration in seconds into a human readable string like '1h 02m 03s'.",
            "reference": "...",
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, _ = user_set(str(path))
    with pytest.raises(BenchmarkOverlap, match=r"1 of 2 prompts overlap an evaluation benchmark.*HumanEval/90"):
        refuse_benchmarks(table, LeakageSettings(), str(path))
    refuse_benchmarks(table.slice(1), LeakageSettings(), str(path))  # the other row alone is fine


# -- abstraction, aggregation, plan --------------------------------------------------------------


def test_concrete_entities_of_the_prompt_are_replaced_by_abstractions():
    prompt = "Write `rank_scores(values)` that returns the top 10 items; call parseRecords() first and skip 'N/A' entries."
    entities = diagnose.concrete_entities(prompt)
    text, count = diagnose.abstract("rank_scores drops ties among the top 10 and mishandles 'N/A' in parseRecords", entities)
    assert "rank_scores" not in text and "10" not in text and "N/A" not in text and "parseRecords" not in text
    assert count == 4 and "a named function or variable" in text and "a specific number" in text


def test_verdict_requires_a_deficiency_for_a_wrong_answer():
    with pytest.raises(ValueError, match="at least one deficiency"):
        diagnose.Verdict(correct=False, deficiencies=[], rationale="")


# -- the reference check beside the oracle ----------------------------------------------------------


def right(answer: str, key: str) -> bool:
    found = diagnose.reference_check(answer, key)
    assert found is not None
    return found.correct


def test_reference_check_reads_the_final_answer_without_a_model():
    check = diagnose.reference_check
    assert check("The list sorts to [1, 3, 4].\n\nAnswer: 9", "9") == diagnose.Check(True, "9")
    # The last number of the final line counts, not a number the reasoning passed through.
    assert check("It adds 4 and 16 ... and gets 20, so 9 is wrong.\nThe value of total is 1.", "20") == diagnose.Check(False, "1")
    assert right("Output:\n```python\n# prints 1,234\n```", "1234")  # fences skipped, separators ignored
    assert right("Answer: 2.50", "2.5") and not right("Answer: 2.51", "2.5")
    assert right("It raises `ValueError`.", "ValueError")
    assert not right("It raises TypeError.", "ValueError") and not right("", "3")
    assert check("anything", None) is None and check("anything", "  ") is None  # no key: the oracle decides


def test_a_user_set_keeps_answer_keys_and_rejects_bad_ones(tmp_path):
    path = tmp_path / "set.jsonl"
    rows = [
        {"id": "n", "prompt": "What is 6 * 7? End with Answer: <value>.", "reference": "Answer: 42", "answer_key": 42},
        {"id": "t", "prompt": "Name the exception of int('x').", "reference": "ValueError", "answer_key": "ValueError"},
        {"id": "b", "prompt": "A third question.", "reference": "yes", "answer_key": True},
        {"id": "o", "prompt": "Write a sorting function.", "reference": "def f(x): return sorted(x)"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, rejected = user_set(str(path))
    assert dict(zip(table.column("id").to_pylist(), table.column("answer_key").to_pylist())) == {"n": "42", "t": "ValueError", "o": None}
    assert [(r["id"], r["reason"]) for r in rejected] == [("b", "bad_answer_key")]


def answered(row_id: str, prompt: str, answer: str, key: str | None) -> dict:
    return {
        "id": row_id,
        "parent_ids": [],
        "origin": "seed",
        "lang": "python",
        "prompt": prompt,
        "reference": "Answer: 9" if key else "def f(): ...",
        "source": "test",
        "answer_key": key,
        "answer": answer,
        "answer_truncated": False,
        "target_model": "tiny",
        "provenance": None,
    }


ORACLE_SAYS_RIGHT = {"correct": True, "deficiencies": [], "rationale": "looks fine"}
NAMED = {
    "skill": "tracing list indexing after an in-place sort",
    "knowledge_area": "program tracing",
    "error_type": "wrong_logic",
    "severity": "major",
    "description": "it used 9 from before the sort",
}


def test_the_reference_check_overrules_an_oracle_that_calls_a_wrong_answer_right(fresh_scripted):
    from tests.test_subject_evolve import run_stage

    fresh_scripted.script(
        [
            # Told that the check failed, the oracle names what went wrong.
            {
                "match": "An exact check has already found",
                "name": "diagnose",
                "actions": [{"json": {"deficiencies": [NAMED], "rationale": "r"}}],
            },
            {"match": "Candidate answer", "name": "verdict", "actions": [{"json": ORACLE_SAYS_RIGHT}]},
        ]
    )
    rows = [
        answered("wrong", "What does the program print? End with Answer: <value>.", "It prints 3.\nAnswer: 3", "9"),
        answered("right", "What does it print, second? End with Answer: <value>.", "Answer: 9", "9"),
        answered("code", "Write a function that sorts.", "def f(x): return sorted(x)", None),
    ]
    outputs, rejects = run_stage(fresh_scripted, lambda c: diagnose.OracleVerdict(c), rows)
    assert rejects == []
    by_id = {o["id"]: o for o in outputs}
    wrong = by_id["wrong"]
    assert (wrong["correct"], wrong["checked_by"], wrong["reference_correct"], wrong["oracle_correct"]) == (False, "reference", False, True)
    assert wrong["final_answer"] == "3" and wrong["deficiencies"][0]["skill"] == NAMED["skill"]
    assert "9" not in wrong["deficiencies"][0]["description"]  # the exam's answer never reaches targeted data
    assert (by_id["right"]["correct"], by_id["right"]["checked_by"], by_id["right"]["deficiencies"]) == (True, "reference", [])
    assert (by_id["code"]["checked_by"], by_id["code"]["reference_correct"], by_id["code"]["correct"]) == ("oracle", None, True)
    assert fresh_scripted.stats()["by_rule"]["diagnose"] == 1  # asked again only where the check overruled it
    table = pa.Table.from_pylist(outputs, schema=diagnose.VERDICT_SCHEMA)
    assert aggregate.check_counts(table) == {"reference_checked": 2, "oracle_overruled": 1}
    assert aggregate.accuracy(table)["correct"] == 2 and aggregate.deficiency_groups(table, 1.0).num_rows == 1


def verdict(row_id: str, correct: bool, *items: tuple[str, str, str, str], lang: str = "python") -> dict:
    return {
        "id": row_id,
        "lang": lang,
        "correct": correct,
        "deficiencies": [
            {"skill": s, "knowledge_area": k, "error_type": e, "severity": sev, "description": f"{s} failed"} for s, k, e, sev in items
        ],
    }


def test_deficiencies_group_and_rank_by_frequency_and_severity():
    verdicts = pa.Table.from_pylist(
        [
            verdict("a", False, ("Handling duplicate values", "Selection algorithms", "missed_edge_case", "major")),
            verdict(
                "b",
                False,
                ("handling duplicate values.", "selection algorithms", "missed_edge_case", "critical"),
                ("Off-by-one loop bounds", "Iteration", "wrong_logic", "minor"),
            ),
            verdict("c", False, ("Off-by-one loop bounds", "Iteration", "wrong_logic", "minor")),
            verdict("d", True),
        ]
    )
    groups = aggregate.deficiency_groups(verdicts, merge_similarity=1.0).to_pylist()
    assert [(g["rank"], g["skill"], g["failures"], g["weight"]) for g in groups] == [
        (1, "Handling duplicate values", 2, 5.0),
        (2, "Off-by-one loop bounds", 2, 2.0),
    ]
    assert groups[0]["prompts"] == 2 and [e["diagnosis_id"] for e in groups[0]["examples"]] == ["b", "a"]
    assert abs(groups[0]["share"] - 5 / 7) < 1e-3
    assert aggregate.accuracy(verdicts) == {"judged": 4, "correct": 1, "accuracy": 0.25}


def test_targets_are_allocated_in_proportion_to_weight_under_the_cap():
    assert targeted.allocate([5, 2, 1], 8) == [5, 2, 1]
    assert sum(targeted.allocate([5, 2, 1], 7)) == 7
    assert targeted.allocate([1, 1], 0) == [0, 0]
    verdicts = pa.Table.from_pylist(
        [
            verdict("a", False, ("skill one", "area", "wrong_logic", "critical")),
            verdict("b", False, ("skill two", "area", "wrong_logic", "minor")),
        ]
    )
    groups = aggregate.deficiency_groups(verdicts, merge_similarity=1.0)
    plan = targeted.plan_targets(groups, cap=4, top_groups=5, iteration=3).to_pylist()
    assert [p["deficiency"]["skill"] for p in plan] == ["skill one"] * 3 + ["skill two"]
    assert all(p["origin"] == "diagnosis" and p["iteration"] == 3 for p in plan)
    assert len(targeted.plan_targets(groups, cap=4, top_groups=1, iteration=3)) == 4


# -- trigger and roles ---------------------------------------------------------------------------


def test_target_comes_from_the_event_then_params_and_secrets_are_refused():
    settings = DiagnosisSettings()
    event = {"id": 7, "extra": {"base_url": "http://m/v1", "model": "m1", "conn_id": "llm_m1"}, "timestamp": "t"}
    target, trigger, described = resolve_target(settings, [event], None)
    assert (
        target == {"base_url": "http://m/v1", "model": "m1", "conn_id": "llm_m1"}
        and trigger == "asset_event"
        and '"id":7' in (described or "")
    )
    manual = DiagnosisSettings(target_base_url="http://x/v1", target_model="x")
    assert resolve_target(manual, [], event)[1] == "params"
    assert resolve_target(settings, [], event)[1] == "latest_registration"
    with pytest.raises(ValueError, match="secret-looking"):
        resolve_target(settings, [{"extra": {"base_url": "http://m/v1", "model": "m", "api_key": "sk-x"}}], None)
    with pytest.raises(ValueError, match="no target model"):
        resolve_target(settings, [], None)
    extra = registration_extra({"base_url": "http://m/v1", "model": "m", "conn_id": "", "name": "v1", "api_key": "sk-never"})
    assert extra == {"base_url": "http://m/v1", "model": "m", "name": "v1"}  # only the named fields travel


def test_oracle_role_falls_back_to_the_judge_then_default():
    conns = {
        "llm_judge": {"host": "http://judge/v1", "extra": {"model": "j"}},
        "llm_default": {"host": "http://d/v1", "extra": {"model": "d"}},
    }
    assert role_config("oracle", conns.get).model == "j"
    assert role_config("oracle", {"llm_default": conns["llm_default"]}.get).model == "d"


def test_diagnosis_dags_parse_with_their_asset_schedule_and_params():
    from tests.test_dag_integrity import parse_dags

    dags = parse_dags()["dags"]
    diagnosis = dags["deficiency_diagnosis"]
    assert "models.registered" in diagnosis["schedule"] and diagnosis["catchup"] is False
    assert {
        "start_iteration",
        "answer_prompts",
        "judge_answers",
        "aggregate_deficiencies",
        "synthesize_targeted",
        "screen_leakage",
        "assess_quality",
        "generate_responses",
        "commit_respond",
        "verify_responses",
        "publish",
    } <= set(diagnosis["tasks"])
    for param in (
        "target_base_url",
        "target_model",
        "diagnosis_source",
        "max_targeted",
        "top_groups",
        "leakage_max_cosine",
        "leakage_max_ngram_overlap",
        "storage_root",
    ):
        assert param in diagnosis["params"]
    assert set(dags["register_model"]["params"]) == {"base_url", "model", "conn_id", "name"}
