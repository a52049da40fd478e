"""Responses, multi-turn dialogues and difficulty scores against the scripted server."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from infinisynth.llm import LLMClient, RoleConfig, UsageMeter
from infinisynth.specs.subject_instruct import SubjectSettings
from infinisynth.subject.difficulty import DIFFICULTY_SCHEMA, Difficulty, DifficultySettings
from infinisynth.subject.multiturn import (
    CONVERSATION_SCHEMA,
    FOLLOWUP_KINDS,
    MultiTurn,
    MultiTurnSettings,
    SurvivorResponse,
    followup_count,
    followup_kinds,
    repeats,
)
from tests.test_subject_evolve import run_stage


def verified(i: int, instruction: str, response: str | None = None) -> dict:
    row = {
        "id": f"v-{i}",
        "parent_ids": ["seed-0"],
        "origin": "evolved",
        "lang": None,
        "instruction": instruction,
        "tags": ["statistics", "hypothesis testing"],
        "domains": ["mathematics"],
        "selection_reasons": ["multi_skill"],
        "seed_id": "seed-0",
        "generation": 1,
        "lineage": [{"generation": 1, "operation": "deepen", "id": f"v-{i}"}],
        "provenance": None,
        "parent_instruction": "What is a p-value?",
        "operation": "deepen",
        "oracle_explanation": "ok",
    }
    if response is not None:
        row["response"] = response
    return row


def test_responses_reject_refusals_empty_and_cut_off_answers(fresh_scripted):
    fresh_scripted.script(
        [
            {"match": "REFUSE_marker", "actions": [{"content": "I'm sorry, but I cannot help with that request."}]},
            {"match": "EMPTY_marker", "actions": [{"content": " ... !! "}]},
            {
                "match": "CAVEAT_marker",
                "actions": [{"content": "Sorry for the long answer. " + "A p-value measures evidence against the null. " * 20}],
            },
        ]
    )
    rows = [
        verified(0, "Explain p-values with an example."),
        verified(1, "REFUSE_marker: explain p-values."),
        verified(2, "EMPTY_marker: explain p-values."),
        verified(3, "CAVEAT_marker: explain p-values."),
    ]
    outputs, rejects = run_stage(fresh_scripted, lambda c: SurvivorResponse(c), rows)
    assert {r["id"]: r["reason"] for r in rejects} == {"v-1": "refused", "v-2": "empty_response"}
    assert [o["id"] for o in outputs] == ["v-0", "v-3"]  # a long answer that says sorry is still an answer
    assert outputs[0]["response"].startswith("Scripted answer") and "respond" in json.loads(outputs[0]["provenance"])


def test_a_cut_off_response_is_rejected_as_truncated(fresh_scripted):
    cut = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A p-value is the prob"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }
    fresh_scripted.script([{"match": "CUT_marker", "actions": [{"body": json.dumps(cut)}]}])
    outputs, rejects = run_stage(fresh_scripted, lambda c: SurvivorResponse(c), [verified(5, "CUT_marker: explain p-values.")])
    assert outputs == [] and [(r["reason"], r["raw_answer"]) for r in rejects] == [("truncated", "A p-value is the prob")]


def test_followup_count_is_seeded_and_covers_one_to_four():
    settings = MultiTurnSettings()
    counts = Counter(followup_count(f"row-{i}", settings) for i in range(400))
    assert set(counts) == {1, 2, 3, 4} and min(counts.values()) > 60
    assert followup_count("row-1", settings) == followup_count("row-1", settings)
    assert {followup_count(f"r{i}", MultiTurnSettings(min_followups=2, max_followups=2)) for i in range(20)} == {2}
    with pytest.raises(ValueError):
        MultiTurnSettings(min_followups=0)


# What the scripted "user" asks for each kind of follow-up (matched on the kind's opening words).
KIND_QUESTIONS = {
    'Start with "Can you show"': "Can you show the calculation for a sample of 30 people?",
    'Start with "What happens if"': "What happens if the effect size is almost zero?",
    'Start with "Is there another way"': "Is there another way, say by simulation, and when is it better?",
    'Start with "Why"': "Why does a larger alpha raise the power?",
    'Start with "How would you change"': "How would you change it for a one-sided test?",
}


def test_multiturn_builds_on_the_conversation_and_rejects_repeats(fresh_scripted):
    fresh_scripted.script(
        [
            # A follow-up that repeats the first user turn however often it is drawn: rejected.
            {
                "match": ["REPEAT_marker", "Write follow-up message"],
                "actions": [{"json": {"question": "REPEAT_marker: what is a p-value?"}}],
            },
            # Every follow-up must see the whole conversation: the first assistant turn is in its prompt.
            *(
                {"match": ["FIRST_ANSWER_marker", opener], "name": "followup", "actions": [{"json": {"question": question}}]}
                for opener, question in KIND_QUESTIONS.items()
            ),
        ]
    )
    settings = MultiTurnSettings(min_followups=1, max_followups=4, sampling_seed=3)
    rows = [verified(i, f"Explain statistical power, case {i}.", f"FIRST_ANSWER_marker {i}: power is 1 - beta.") for i in range(5)]
    rows.append(verified(9, "REPEAT_marker: what is a p-value?", "It is a probability."))
    make = lambda c: MultiTurn(c, settings)  # noqa: E731
    outputs, rejects = run_stage(fresh_scripted, make, rows)

    assert [(r["id"], r["reason"]) for r in rejects] == [("v-9", "repeated_turn")]
    assert "in 3 draws" in rejects[0]["detail"]  # drawn again with new seeds before giving up
    assert len(outputs) == 5
    for out, row in zip(outputs, rows):
        wanted = followup_count(row["id"], settings)
        assert out["followups"] == wanted and len(out["messages"]) == 2 + 2 * wanted
        assert [m["role"] for m in out["messages"]] == ["user", "assistant"] * (1 + wanted)
        assert out["messages"][:2] == [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"]}]
        users = [m["content"] for m in out["messages"] if m["role"] == "user"]
        assert len(set(users)) == len(users)
        # Each round asked a different kind of follow-up, in the seeded order.
        asked = [next(opener for opener, q in KIND_QUESTIONS.items() if q == u) for u in users[1:]]
        assert asked == [f'Start with "{KIND_OPENERS[k]}"' for k in followup_kinds(row["id"], wanted, 3)]
        assert out["origin"] == "multiturn" and out["parent_ids"][0] == row["id"] and out["id"] != row["id"]
    # One follow-up question per round, each asked with the conversation (and its first answer) in view.
    assert fresh_scripted.stats()["by_rule"]["followup"] == sum(o["followups"] for o in outputs)
    assert pa.Table.from_pylist(outputs, schema=CONVERSATION_SCHEMA).num_rows == 5


KIND_OPENERS = {
    "example": "Can you show",
    "edge_case": "What happens if",
    "alternative": "Is there another way",
    "explain_step": "Why",
    "new_requirement": "How would you change",
}


def test_a_repeated_followup_is_drawn_again_before_the_row_is_rejected(fresh_scripted):
    # The first draw copies the opening question; the redraw (another sampling seed) asks something new.
    fresh_scripted.script(
        [
            {
                "match": ["ONCE_marker", "Write follow-up message"],
                "actions": [{"json": {"question": "ONCE_marker: explain statistical power."}}, {"json": {"question": "And for n = 10?"}}],
            }
        ]
    )
    settings = MultiTurnSettings(min_followups=1, max_followups=1)
    outputs, rejects = run_stage(
        fresh_scripted, lambda c: MultiTurn(c, settings), [verified(1, "ONCE_marker: explain statistical power.", "It is 1 - beta.")]
    )
    assert rejects == [] and [m["content"] for m in outputs[0]["messages"] if m["role"] == "user"][1] == "And for n = 10?"


def test_repeats_are_the_same_words_or_mostly_copied_trigrams():
    earlier = ["Explain how a hash map resolves collisions with open addressing."]
    assert repeats("explain how a HASH map resolves collisions, with open addressing!", earlier)
    assert repeats("Can you explain how a hash map resolves collisions with open addressing?", earlier)
    assert repeats("  ", earlier) and repeats("<the user's next message>", earlier)  # nothing asked
    assert not repeats("What happens if the table is full when a new key arrives?", earlier)


def test_followup_kinds_differ_within_a_conversation_and_are_seeded():
    for i in range(50):
        kinds = followup_kinds(f"row-{i}", 4)
        assert len(set(kinds)) == 4 and set(kinds) <= set(FOLLOWUP_KINDS)
        assert kinds == followup_kinds(f"row-{i}", 4)
    assert len({tuple(followup_kinds(f"row-{i}", 2)) for i in range(50)}) > 5  # rows get different kinds


def test_followup_penalties_come_from_the_role_and_key_the_cache(fresh_scripted):
    plain = RoleConfig(role="followup", base_url=fresh_scripted.base_url, model="scripted")
    penalized = plain.with_overrides(frequency_penalty=0.6, presence_penalty=0.4)
    assert "frequency_penalty" not in plain.generation_config()  # roles without penalties keep their keys
    assert penalized.generation_config()["frequency_penalty"] == 0.6 and penalized.penalties() == {
        "frequency_penalty": 0.6,
        "presence_penalty": 0.4,
    }
    settings = SubjectSettings(followup_frequency_penalty=0.6, followup_presence_penalty=0.4)
    assert settings.role_overrides("followup") == {"frequency_penalty": 0.6, "presence_penalty": 0.4}
    assert settings.role_overrides("generator") == {}  # evolution and answers keep theirs
    usage = UsageMeter()
    stages = [MultiTurn(LLMClient(config, usage), MultiTurnSettings()) for config in (plain, penalized)]
    assert stages[0].fingerprint() != stages[1].fingerprint()  # a new penalty never reuses an old answer


def test_difficulty_scores_average_samples_and_keep_the_generation(fresh_scripted):
    fresh_scripted.script(
        [
            {
                "match": "HARD_marker",
                "actions": [{"json": {"difficulty": 9, "rationale": "many steps"}}, {"json": {"difficulty": 8, "rationale": "x"}}],
            },
            {"match": "EASY_marker", "actions": [{"json": {"difficulty": 2, "rationale": "trivial"}}]},
            {"match": "BROKEN_marker", "actions": [{"content": "{not json"}]},
        ]
    )
    seed_row = {**verified(0, "EASY_marker: add 2 and 3."), "origin": "seed", "generation": 0, "seed_id": None}
    rows = [seed_row, verified(1, "HARD_marker: prove the CLT for iid variables."), verified(2, "BROKEN_marker: rate me.")]
    make = lambda c: Difficulty(c, DifficultySettings(samples=2))  # noqa: E731
    outputs, rejects = run_stage(fresh_scripted, make, rows)
    by_id = {o["id"]: o for o in outputs}
    assert by_id["v-0"]["difficulty"] == 2 and by_id["v-0"]["generation"] == 0 and by_id["v-0"]["seed_id"] == "v-0"
    # Two samples of one prompt walk the rule's actions: 9 then 8.
    assert by_id["v-1"]["difficulty"] == 8.5 and by_id["v-1"]["difficulty_samples"] == 2 and by_id["v-1"]["generation"] == 1
    assert [(r["id"], r["reason"]) for r in rejects] == [("v-2", "invalid_output")]
    assert pa.Table.from_pylist(outputs, schema=DIFFICULTY_SCHEMA).num_rows == 2
