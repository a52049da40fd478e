"""Against the real embedded model (SmolLM2-135M via llama.cpp): the machinery holds end to end.

The tiny model writes poor problems; these tests assert what must hold regardless of quality.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from infinisynth.llm import LLMClient
from infinisynth.model_server import embedded_connection
from infinisynth.prompts import load_prompt
from infinisynth.settings import role_config, store_for
from infinisynth.stages.problems import ProblemAnswer

pytestmark = pytest.mark.slow


def test_structured_answer_from_embedded_model_validates(embedded_model):
    role = role_config("generator", lambda conn_id: embedded_connection(embedded_model) if conn_id == "llm_default" else None)
    messages = load_prompt("reverse_construction").render(
        lang="python", lang_name="Python", snippet="def mean(xs):\n    return sum(xs) / len(xs)\n", variant=0
    )

    async def ask():
        async with LLMClient(role) as client:
            return await client.structured(messages, ProblemAnswer, stage="reverse"), client.usage.snapshot()

    answer, usage = asyncio.run(ask())
    assert isinstance(answer, ProblemAnswer) and answer.problem.strip()
    assert usage["generator/reverse"]["prompt_tokens"] > 50
    assert usage["generator/reverse"]["completion_tokens"] > 0


def test_code_instruct_dag_on_embedded_model(airflow_home, embedded_model, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    snippets = [
        ("python", "def is_even(n):\n    return n % 2 == 0\n"),
        ("javascript", "const sum = (xs) => xs.reduce((a, b) => a + b, 0);\n"),
        ("python", "import json\n\ndef load(path):\n    with open(path) as fh:\n        return json.load(fh)\n"),
    ]
    seeds.write_text("".join(json.dumps({"lang": lang, "seed": code}) + "\n" for lang, code in snippets))
    root = f"file://{tmp_path / 'data'}"
    env = {"AIRFLOW_CONN_LLM_DEFAULT": json.dumps(embedded_connection(embedded_model)), "INFINISYNTH_ROOT": root}

    airflow_home.dags_test("code_instruct", "2026-02-03", {"seed_source": str(seeds), "shard_size": 2}, env)

    store = store_for(root)
    manifest = store.partition("code_instruct", "dataset", "2026-02-03").manifest()
    funnel = {entry["stage"]: entry for entry in manifest.meta["funnel"]}
    assert list(funnel) == ["seeds", "reverse", "keywords", "backfeed", "quality", "respond", "verify", "write_tests", "execute"]
    for entry in list(funnel.values())[1:]:  # every stage accounts for every input row
        assert entry["inputs_passed"] + entry["rejected"] == entry["rows_in"]
    assert funnel["reverse"]["rows_in"] == len(snippets)
    assert funnel["quality"]["usage"]["judge/quality"]["requests"] >= 3 * funnel["quality"]["rows_in"]
    dataset = store.partition("code_instruct", "dataset", "2026-02-03").read().to_pylist()
    assert len(dataset) + manifest.meta["held_out"]["rows"] == funnel["verify"]["rows_out"]
    assert funnel["verify"]["rows_in"] == funnel["respond"]["rows_out"]  # every answer went through the lint gate
    for row in dataset:
        assert row["messages"][1]["content"].strip() and row["quality_mean"] >= 6
    for stage in ("reverse", "quality", "verify"):
        for row in store.rejected("code_instruct", stage, "2026-02-03").read().to_pylist():
            assert row["reason"] and row["detail"]
