"""Run one shard of a code-pipeline chain (reverse construction and the keywords streamed after
it) in its own process, so a test can kill it mid-chain.

python run_chain_shard.py ROOT DS SHARD_JSON BASE_URL
"""

from __future__ import annotations

import json
import logging
import sys

from infinisynth.settings import role_config, store_for
from infinisynth.specs.code_instruct import SPEC, CodeInstructSettings
from infinisynth.steps import RunContext, run_step_shard


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    root, ds, shard_json, base_url = sys.argv[1:5]
    connection = {"host": base_url, "extra": {"model": "scripted", "max_concurrency": 2}}
    ctx = RunContext(SPEC, store_for(root), ds, CodeInstructSettings(), roles=lambda role: role_config(role, lambda _: connection))
    print("RESULT " + json.dumps(run_step_shard(ctx, "reverse", json.loads(shard_json))), flush=True)


if __name__ == "__main__":
    main()
