"""Publishing: answered problems -> chat-format rows for SFT, with every metadata column kept."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from infinisynth.records import content_id, schema_with
from infinisynth.spill import freeing, rebatched
from infinisynth.stages.problems import COMBINATION_TYPE
from infinisynth.stages.quality import QUALITY_FIELDS
from infinisynth.storage import Partition

# Answered rows a publish step converts at once: a code pair is ~3 KB and passes through a dozen
# copies (Python rows, the chat table, the splits, the spills' casts), so 4,096 of them peaked ~200 MB.
PUBLISH_BATCH_ROWS = 512

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

DATASET_SCHEMA = schema_with(
    pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
    pa.field("problem", pa.string(), nullable=False),
    pa.field("response", pa.string(), nullable=False),
    *QUALITY_FIELDS,
    pa.field("seed", pa.string()),
    pa.field("combination", COMBINATION_TYPE),
    pa.field("provenance", pa.string()),
)

# The papers' fine-tuning recipe, recorded with every export so a trainer need not guess:
# only the assistant's turns carry loss.
SFT_DEFAULTS = {
    "learning_rate": 2e-5,
    "epochs": 3,
    "batch_size": 512,
    "lr_schedule": "cosine",
    "prompt_loss_weight": 0.0,
    "response_loss_weight": 1.0,
}


def to_chat_rows(answered: pa.Table) -> pa.Table:
    """One row per (problem, response) pair: a user turn and an assistant turn, plus metadata."""
    rows = []
    for row in answered.to_pylist():
        rows.append(
            {
                **row,
                "id": content_id("pair", row["id"], row["response"]),
                "parent_ids": [row["id"]],
                "messages": [{"role": "user", "content": row["problem"]}, {"role": "assistant", "content": row["response"]}],
            }
        )
    return pa.Table.from_pylist(rows, schema=DATASET_SCHEMA)


def chat_batches(answered: Partition, batch_rows: int = PUBLISH_BATCH_ROWS) -> Iterator[pa.Table]:
    """A committed partition of answered problems as chat rows (:func:`to_chat_rows`), a batch at a
    time and in its stored order: a publish step holds one batch, not the night."""
    for batch in freeing(rebatched(answered.iter_batches(batch_size=batch_rows), batch_rows)):
        yield to_chat_rows(batch)
