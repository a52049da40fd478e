"""Oracle check against the scripted server: each rejection reason, and the survivors."""

from __future__ import annotations

import json

from infinisynth.prompts import load_prompt
from infinisynth.subject.evolve import prompt_values
from infinisynth.subject.oracle import OracleCheck, OracleSettings, copied_prompt_ngrams
from tests.test_subject_evolve import run_stage

PARENT = "Explain how vaccines train the immune system."


def evolved(i: int, instruction: str, operation: str = "deepen", parent: str = PARENT) -> dict:
    return {
        "id": f"ev-{i}",
        "parent_ids": ["seed-0"],
        "origin": "evolved",
        "lang": None,
        "instruction": instruction,
        "tags": ["immunology", "vaccines"],
        "domains": ["medicine"],
        "selection_reasons": ["long_tail"],
        "seed_id": "seed-0",
        "generation": 1,
        "lineage": [{"generation": 1, "operation": operation, "id": f"ev-{i}"}],
        "provenance": None,
        "parent_instruction": parent,
        "operation": operation,
    }


def oracle(client):
    return OracleCheck(client, OracleSettings(copy_ngram_words=6))


def test_copied_ngrams_ignore_runs_the_parent_or_tags_already_had():
    prompt = "Operation: deepen. Increase the depth and breadth of the inquiry about the immune system response"
    assert copied_prompt_ngrams("Please increase the depth and breadth of the inquiry now", prompt, [], 6) == [
        "depth and breadth of the inquiry",
        "increase the depth and breadth of",
        "the depth and breadth of the",
    ]
    # The same run in the parent is the parent's own wording, not a copy of the prompt.
    assert (
        copied_prompt_ngrams(
            "increase the depth and breadth of the inquiry", prompt, ["We increase the depth and breadth of the inquiry"], 6
        )
        == []
    )
    assert copied_prompt_ngrams("depth and breadth of", prompt, [], 6) == []  # shorter than n


def test_each_failure_has_its_reason_and_survivors_keep_the_explanation(fresh_scripted):
    prompt_text = " ".join(
        m["content"]
        for m in load_prompt("subject_evolution").render(**prompt_values(PARENT, "deepen", ["immunology", "vaccines"], ["medicine"]))
    )
    assert "ask about the underlying" in prompt_text  # the copied run below is really in the prompt
    fresh_scripted.script(
        [
            {
                "match": "REPHRASE_marker",
                "name": "rephrase",
                "actions": [{"json": {"adds_information": False, "answerable": True, "explanation": "only reworded"}}],
            },
            {
                "match": "IMPOSSIBLE_marker",
                "name": "impossible",
                "actions": [{"json": {"adds_information": True, "answerable": False, "explanation": "needs the attached chart"}}],
            },
            {
                "match": "Rewritten:",
                "name": "fine",
                "actions": [{"json": {"adds_information": True, "answerable": True, "explanation": "adds mechanisms and constraints"}}],
            },
        ]
    )
    rows = [
        evolved(0, "Explain how mRNA vaccines train B and T cells, comparing them with live attenuated vaccines in under 300 words."),
        evolved(1, "Explain vaccines and ask about the underlying causes, edge cases, limitations or consequences of immunity."),
        evolved(2, "explain how vaccines   train the immune system"),
        evolved(3, "REPHRASE_marker: describe how vaccines teach the immune system."),
        evolved(4, "IMPOSSIBLE_marker: using the chart attached, estimate vaccine efficacy per age group."),
    ]
    outputs, rejects = run_stage(fresh_scripted, oracle, rows)

    reasons = {r["id"]: r["reason"] for r in rejects}
    assert reasons == {
        "ev-1": "copies_evolution_prompt",
        "ev-2": "no_new_information",
        "ev-3": "no_new_information",
        "ev-4": "unanswerable",
    }
    copied = json.loads(next(r for r in rejects if r["id"] == "ev-1")["evidence_json"])["copied"]
    assert "ask about the underlying causes edge" in copied
    assert next(r for r in rejects if r["id"] == "ev-4")["detail"] == "needs the attached chart"
    # The deterministic checks cost no model call: three rows reached the oracle.
    stats = fresh_scripted.stats()
    assert stats["total"] == 3 and stats["by_rule"] == {"rephrase": 1, "impossible": 1, "fine": 1}
    assert [o["id"] for o in outputs] == ["ev-0"]
    assert outputs[0]["oracle_explanation"] == "adds mechanisms and constraints"
    assert "oracle_g1" in json.loads(outputs[0]["provenance"])


def test_without_the_model_verdict_only_the_deterministic_checks_run(fresh_scripted):
    make = lambda c: OracleCheck(c, OracleSettings(model_verdict=False))  # noqa: E731
    rows = [evolved(0, "Explain how mRNA vaccines train B cells, in under 200 words."), evolved(1, PARENT.upper())]
    outputs, rejects = run_stage(fresh_scripted, make, rows)
    assert [o["id"] for o in outputs] == ["ev-0"] and [r["reason"] for r in rejects] == ["no_new_information"]
    assert fresh_scripted.stats()["total"] == 0
