"""Base-model losses through a completions endpoint: the scripted server, then the embedded model."""

from __future__ import annotations

import json
import math
import random

import pytest

from infinisynth.llm import RoleConfig
from infinisynth.model_server import embedded_connection
from infinisynth.settings import role_config
from infinisynth.shards import commit_stage, run_stage_shard
from infinisynth.storage import Store
from infinisynth.subject.losses import LOSSES_SCHEMA, ResponseLosses, response_losses
from infinisynth.subject.pool import PIPELINE

DS = "2026-05-01"


def base_role(url: str) -> RoleConfig:
    return RoleConfig(role="base", base_url=url, model="scripted", max_retries=0)


def row(i: int, instruction: str, response: str) -> dict:
    return {
        "id": f"r{i}", "parent_ids": [], "origin": "seed", "lang": None, "instruction": instruction, "response": response,
        "messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}],
        "source": "test", "source_id": str(i), "raw_tags": [{"tag": "t", "explanation": ""}], "provenance": "{}",
    }  # fmt: skip


def test_fixed_token_scores_give_known_losses(fresh_scripted):
    # The conditional text starts with "Instruction:", the unconditional one only has "Response:".
    fresh_scripted.script(
        [{"match": "Instruction:", "actions": [{"token_logprob": -1.0}]}, {"match": "Response:", "actions": [{"token_logprob": -3.0}]}]
    )
    [loss] = response_losses(base_role(fresh_scripted.base_url), [{"instruction": "Add 2 and 2.", "response": "The sum is 4."}])
    assert loss.loss_given_instruction == pytest.approx(1.0)
    assert loss.loss_alone == pytest.approx(3.0)
    assert loss.reduction == pytest.approx(2.0)
    assert loss.tokens == 4  # "The", " sum", " is", " 4." : the prompt's and the generated token are not counted


def test_an_instruction_that_shares_the_answers_words_reduces_its_loss(fresh_scripted):
    # The scripted model scores a word it has already seen as likely: like a real model, context helps.
    related, unrelated = response_losses(
        base_role(fresh_scripted.base_url),
        [
            {
                "instruction": "Name the largest planet in the solar system.",
                "response": "The largest planet in the solar system is Jupiter.",
            },
            {"instruction": "Write a haiku about rain.", "response": "The largest planet in the solar system is Jupiter."},
        ],
    )
    assert related.loss_alone == pytest.approx(unrelated.loss_alone)
    assert related.loss_given_instruction < unrelated.loss_given_instruction
    assert related.reduction > unrelated.reduction >= 0


def test_stage_accounts_for_every_row(fresh_scripted, tmp_path):
    no_logprobs = {"id": "x", "object": "text_completion", "created": 0, "model": "m",
                   "choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}]}  # fmt: skip
    fresh_scripted.script(
        [
            {"match": "Server breaks here", "actions": [{"status": 500}]},
            {"match": "No logprobs here", "actions": [{"body": json.dumps(no_logprobs)}]},
        ]
    )
    store = Store(f"file://{tmp_path / 'data'}")
    rows = [
        row(0, "Explain recursion.", "Recursion is when a function calls itself."),
        row(1, "Say nothing.", ""),
        row(2, "Server breaks here", "Something."),
        row(3, "No logprobs here", "Something else."),
    ]
    result = run_stage_shard(store, PIPELINE, "losses", DS, 0, rows, base_role(fresh_scripted.base_url), lambda c: ResponseLosses(c))
    funnel = commit_stage(store, PIPELINE, "losses", DS, LOSSES_SCHEMA, [result.to_dict()])

    assert funnel["rows_in"] == 4 and funnel["rows_out"] == 2
    # A judged answer without log-probabilities is rejected; a server error is pending (redone by a re-run).
    assert funnel["rejected_by_reason"] == {"no_logprobs": 1}
    assert funnel["pending"] == 1 and funnel["pending_by_reason"] == {"server_error": 1}
    out = {r["id"]: r for r in store.partition(PIPELINE, "losses", DS).read().to_pylist()}
    assert out["r0"]["loss_conditional"] > 0 and out["r0"]["loss_tokens"] == 7 and out["r0"]["loss_note"] is None
    assert math.isclose(out["r0"]["loss_reduction"], out["r0"]["loss_unconditional"] - out["r0"]["loss_conditional"])
    assert out["r1"]["loss_conditional"] is None and out["r1"]["loss_note"] == "no_response"
    assert funnel["usage"]["base/losses"]["requests"] >= 4


@pytest.mark.slow
def test_embedded_model_losses_are_finite_and_lower_for_sensible_text(embedded_model):
    role = role_config("base", lambda conn_id: embedded_connection(embedded_model) if conn_id == "llm_default" else None)
    pairs = [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Write a Python function that returns the square of a number.", "def square(x):\n    return x * x"),
        ("How many days are in a week?", "There are seven days in a week."),
    ]
    rng = random.Random(3)
    shuffled = []
    for instruction, response in pairs:
        words = response.split()
        rng.shuffle(words)
        shuffled.append((instruction, " ".join(words)))

    sensible = response_losses(role, [{"instruction": i, "response": r} for i, r in pairs])
    scrambled = response_losses(role, [{"instruction": i, "response": r} for i, r in shuffled])

    for good, bad in zip(sensible, scrambled):
        assert all(math.isfinite(v) and v > 0 for v in (good.loss_given_instruction, good.loss_alone, bad.loss_given_instruction))
        assert good.tokens >= 5
        assert good.loss_given_instruction < bad.loss_given_instruction
    # the question helps the model predict its answer
    assert sum(loss.reduction for loss in sensible) > 0
