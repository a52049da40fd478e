"""Evolution stage against the scripted OpenAI server: operations, lineage, generations, rejects."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pyarrow as pa

from infinisynth.llm import LLMClient, RoleConfig, UsageMeter
from infinisynth.runner import rejected_table, run_shard, split_outcomes
from infinisynth.subject.evolve import EVOLVED_SCHEMA, OPERATIONS, SEED_SCHEMA, Evolution, EvolutionSettings, choose_operation


def seed(i: int, instruction: str, reasons: list[str] | None = None, tags: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": f"seed-{i}",
        "parent_ids": [],
        "origin": "seed",
        "lang": None,
        "instruction": instruction,
        "tags": tags if tags is not None else ["photosynthesis", "plant biology"],
        "domains": ["natural sciences"],
        "selection_reasons": reasons or [],
        "seed_id": f"seed-{i}",
        "generation": 0,
        "lineage": [],
        "provenance": None,
        "response": "Plants turn light into sugar.",
        "source": "fixture",
        "loss_conditional": 1.0,
        "loss_unconditional": 2.0,
        "loss_reduction": 1.0,
    }


def run_stage(server, make_stage, rows: list[dict[str, Any]], **role: Any) -> tuple[list[dict], list[dict]]:
    """Run a stage over rows through the real runner and client; (outputs, rejected rows)."""
    usage = UsageMeter()
    config = RoleConfig(role="generator", base_url=server.base_url, model="scripted", max_invalid_retries=1, **role)

    async def go():
        async with LLMClient(config, usage) as client:
            return await run_shard(make_stage(client), rows, usage=usage, concurrency=4)

    outputs, rejects = split_outcomes("evolve", asyncio.run(go()))
    return outputs, rejects


def evolution(client: LLMClient) -> Evolution:
    return Evolution(client, EvolutionSettings(sampling_seed=0))


def test_operation_is_seeded_weighted_by_selection_reason_and_never_repeated():
    base = seed(0, "Explain photosynthesis.")
    assert choose_operation(base) == choose_operation(dict(base))  # same row, same draw
    drawn = Counter(choose_operation({**base, "id": f"s{i}", "selection_reasons": ["long_tail"]}) for i in range(600))
    assert set(drawn) == set(OPERATIONS)
    # long_tail adds weight 2 to in_breadth: 3/6 of the draws, the others 1/6 each.
    assert 0.42 < drawn["in_breadth"] / 600 < 0.58
    assert all(0.1 < drawn[op] / 600 < 0.24 for op in OPERATIONS if op != "in_breadth")
    for i in range(200):
        row = {**base, "id": f"g{i}", "lineage": [{"generation": 1, "operation": "deepen", "id": "x"}]}
        assert choose_operation(row) != "deepen"


def test_evolves_seeds_with_tags_in_the_prompt_and_records_lineage(fresh_scripted):
    fresh_scripted.script(
        [
            {
                "match": ["Explain photosynthesis.", "Skills it exercises: photosynthesis, plant biology", "Domain: natural sciences"],
                "name": "guided",
                "actions": [{"json": {"instruction": "Explain photosynthesis step by step for C4 plants in hot climates."}}],
            },
            {"match": "TOO_SHORT_marker", "actions": [{"json": {"instruction": "Hm."}}]},
            {"match": "BROKEN_marker", "actions": [{"content": "{not json"}]},
        ]
    )
    rows = [
        seed(0, "Explain photosynthesis."),
        seed(1, "TOO_SHORT_marker: describe the water cycle."),
        seed(2, "BROKEN_marker: name three rivers."),
    ]
    outputs, rejects = run_stage(fresh_scripted, evolution, rows)

    assert len(outputs) == 1 and fresh_scripted.stats()["by_rule"]["guided"] == 1
    out = outputs[0]
    assert out["instruction"] == "Explain photosynthesis step by step for C4 plants in hot climates."
    assert out["origin"] == "evolved" and out["generation"] == 1 and out["parent_ids"] == ["seed-0"]
    assert out["seed_id"] == "seed-0" and out["parent_instruction"] == "Explain photosynthesis."
    assert out["operation"] == choose_operation(rows[0])
    assert out["lineage"] == [{"generation": 1, "operation": out["operation"], "id": out["id"]}]
    assert out["tags"] == rows[0]["tags"] and json.loads(out["provenance"])["evolve_g1"]["prompt"].startswith("subject_evolution@")
    assert pa.Table.from_pylist(outputs, schema=EVOLVED_SCHEMA).num_rows == 1
    assert {r["id"]: r["reason"] for r in rejects} == {"seed-1": "too_short", "seed-2": "invalid_output"}
    assert rejected_table(rejects).num_rows == 2 and all(json.loads(r["input_json"])["id"] for r in rejects)


def test_second_generation_builds_on_the_first(fresh_scripted):
    rows = [seed(i, f"Describe how tides work, case {i}.", reasons=["multi_skill"]) for i in range(6)]
    first, rejects = run_stage(fresh_scripted, evolution, rows)
    assert len(first) == 6 and not rejects
    second, rejects = run_stage(fresh_scripted, evolution, first)
    assert len(second) == 6 and not rejects
    by_parent = {r["parent_ids"][0]: r for r in second}
    for parent in first:
        child = by_parent[parent["id"]]
        assert child["generation"] == 2 and child["parent_ids"] == [parent["id"], parent["parent_ids"][0]]
        assert child["seed_id"] == parent["seed_id"] and child["parent_instruction"] == parent["instruction"]
        assert [s["generation"] for s in child["lineage"]] == [1, 2] and child["lineage"][0] == parent["lineage"][0]
        assert child["lineage"][1]["operation"] != child["lineage"][0]["operation"]  # never the same twice in a row
        assert set(json.loads(child["provenance"])) == {"evolve_g1", "evolve_g2"}


def test_seed_schema_accepts_pool_rows_with_losses():
    assert pa.Table.from_pylist([seed(0, "x")], schema=SEED_SCHEMA).column("loss_reduction").to_pylist() == [1.0]
