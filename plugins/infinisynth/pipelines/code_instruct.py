"""Infinite-Instruct, the code-instruction pipeline: seeds -> Reverse Construction -> publish.

Each function here is the body of one task of ``dags/code_instruct.py``. They take plain values
(the run's settings, a shard descriptor) and return paths and counts, never datasets.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from infinisynth import seeds
from infinisynth.llm import RoleConfig
from infinisynth.prompts import load_prompt
from infinisynth.shards import commit_stage, funnel_table, run_stage_shard
from infinisynth.stages.reverse import ReverseConstruction, ReverseSettings
from infinisynth.storage import Store

log = logging.getLogger(__name__)

PIPELINE = "code_instruct"
SEED_STAGE = "seeds"
REVERSE_STAGE = "reverse"
REVERSE_PROMPT = "reverse_construction"


class CodeInstructSettings(BaseModel):
    """A run's settings: the DAG's Params, validated once, with the papers' defaults."""

    model_config = ConfigDict(extra="ignore")

    seed_source: str = Field("mine", description="'mine' (snippets from seed_roots) or a Magicoder-shaped Parquet/JSONL path")
    seed_roots: list[str] = Field(default_factory=list, description="source trees to mine; empty = stdlib + npm modules")
    seed_languages: list[str] = Field(default_factory=list, description="languages to keep; empty = all")
    max_seeds: int = Field(200, gt=0)
    shard_size: int = Field(50, gt=0)
    mining_seed: int = 0
    problems_per_seed: int = Field(1, ge=1, le=10)
    generator_model: str = ""
    generator_temperature: float | None = Field(None, ge=0, le=2)
    generator_max_tokens: int | None = Field(None, gt=0)

    def generator_overrides(self) -> dict[str, Any]:
        return {
            "model": self.generator_model or None,
            "temperature": self.generator_temperature,
            "max_tokens": self.generator_max_tokens,
        }


def prepare_seeds(store: Store, ds: str, settings: CodeInstructSettings) -> list[dict[str, Any]]:
    """Load or mine the night's seeds into the ``seeds`` partition, one file per shard."""
    stats = seeds.SeedStats()
    if settings.seed_source == "mine":
        roots = settings.seed_roots or [str(p) for p in seeds.default_seed_roots()]
        table = seeds.mine_snippets(
            roots,
            max_snippets=settings.max_seeds,
            languages=settings.seed_languages or None,
            seed=settings.mining_seed,
            stats=stats,
        )
        source = f"mined from {', '.join(roots)}"
    else:
        table = seeds.load_magicoder(settings.seed_source, max_rows=settings.max_seeds, stats=stats)
        if settings.seed_languages:
            table = table.filter(pc.is_in(table["lang"], value_set=pa.array(settings.seed_languages)))
        source = settings.seed_source
    if table.num_rows == 0:
        raise ValueError(f"no seeds from {source} (languages: {settings.seed_languages or 'all'})")
    partition = store.partition(PIPELINE, SEED_STAGE, ds)
    files = [
        partition.write_table(n, table.slice(offset, settings.shard_size), table.schema)
        for n, offset in enumerate(range(0, table.num_rows, settings.shard_size))
    ]
    languages = dict(sorted(Counter(table.column("lang").to_pylist()).items()))
    partition.commit(files, table.schema, {"pipeline": PIPELINE, "stage": SEED_STAGE, "ds": ds, "source": source, "languages": languages, "stats": stats.__dict__})
    log.info("%d seeds from %s in %d shards; languages %s; %s", table.num_rows, source, len(files), languages, stats)
    return [{"shard": n, "file": f.name, "rows": f.rows} for n, f in enumerate(files)]


def reverse_shard(store: Store, ds: str, shard: dict[str, Any], role: RoleConfig, settings: CodeInstructSettings) -> dict[str, Any]:
    """Reverse Construction over one seed shard (the body of a mapped task)."""
    rows = store.partition(PIPELINE, SEED_STAGE, ds).read_file(shard["file"]).to_pylist()
    prompt = load_prompt(REVERSE_PROMPT)
    stage_settings = ReverseSettings(problems_per_seed=settings.problems_per_seed)
    result = run_stage_shard(
        store, PIPELINE, REVERSE_STAGE, ds, shard["shard"], rows, role,
        lambda client: ReverseConstruction(client, prompt, stage_settings),
    )
    return result.to_dict()


def publish_reverse(store: Store, ds: str, shard_results: list[dict[str, Any]], role: RoleConfig) -> dict[str, Any]:
    """Commit every reverse shard at once and log the night's funnel."""
    seeds_manifest = store.partition(PIPELINE, SEED_STAGE, ds).manifest()
    funnel = commit_stage(
        store, PIPELINE, REVERSE_STAGE, ds, ReverseConstruction.schema, shard_results,
        meta={"prompt_versions": {REVERSE_PROMPT: load_prompt(REVERSE_PROMPT).version}, "roles": {"generator": role.public_dict()}},
    )
    seed_entry = {"stage": SEED_STAGE, "rows_in": seeds_manifest.rows, "inputs_passed": seeds_manifest.rows, "rows_out": seeds_manifest.rows, "rejected": 0}
    log.info("code_instruct %s funnel\n%s", ds, funnel_table([seed_entry, funnel]))
    return {
        "partition": store.partition(PIPELINE, REVERSE_STAGE, ds).url,
        "rows": funnel["rows_out"],
        "rejected": funnel["rejected"],
    }

