"""Row identity and the columns every stage table shares.

Every row carries a stable ``id``: a content hash, so the same content always gets the same id and
a re-run produces the same ids as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

ORIGINS = ("seed", "reverse", "backfeed", "evolved", "multiturn", "diagnosis")

# Columns every stage table starts with; stages append their own fields.
BASE_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("parent_ids", pa.list_(pa.string()), nullable=False),
    pa.field("origin", pa.string(), nullable=False),
    pa.field("lang", pa.string()),
]

# Every row a stage does not pass on lands here, with enough to inspect or replay it.
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # id of the input row
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # short machine-readable code
        pa.field("detail", pa.string()),  # human-readable explanation
        pa.field("raw_answer", pa.string()),  # the model's last answer, if any
        pa.field("evidence_json", pa.string()),  # facts behind the verdict: scores, lint findings
        pa.field("input_json", pa.string()),  # the input row itself, so nothing is lost
    ]
)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_id(*parts: Any) -> str:
    """A stable 16-hex-digit id for the given content (order matters)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()
    return digest[:16]


def schema_with(*fields: pa.Field) -> pa.Schema:
    """The shared base columns followed by a stage's own fields."""
    return pa.schema([*BASE_FIELDS, *fields])
