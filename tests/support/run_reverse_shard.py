"""Run one Reverse Construction shard in its own process, so a test can kill it mid-shard.

python run_reverse_shard.py ROOT DS SHARD_JSON BASE_URL
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
    result = run_step_shard(ctx, "reverse", json.loads(shard_json))
    print("RESULT " + json.dumps(result["reverse"]), flush=True)


if __name__ == "__main__":
    main()
