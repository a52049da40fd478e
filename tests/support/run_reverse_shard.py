"""Run one Reverse Construction shard in its own process, so a test can kill it mid-shard.

python run_reverse_shard.py ROOT DS SHARD_JSON BASE_URL
"""

from __future__ import annotations

import json
import logging
import sys

from infinisynth.pipelines.code_instruct import REVERSE_STAGE, CodeInstructSettings, run_model_stage
from infinisynth.settings import role_config, store_for


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    root, ds, shard_json, base_url = sys.argv[1:5]
    connection = {"host": base_url, "extra": {"model": "scripted", "max_concurrency": 2}}
    result = run_model_stage(
        store_for(root),
        ds,
        REVERSE_STAGE,
        json.loads(shard_json),
        lambda role: role_config(role, lambda _: connection),
        CodeInstructSettings(),
    )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
