"""The held-out slice of a published chat table: the diagnosis loop's exam, never trained on.

The split is a pure function of each row's prompt (its first user turn): a salted SHA-256 of the
prompt, read as a number in [0, 1), below ``fraction`` means held out. So the same prompt always
falls on the same side - on every night, every re-run and every response it gets - and the
held-out share is ``fraction`` in expectation without any state to keep.

A publish step calls :func:`split_holdout` on its chat rows (a batch at a time: a row's side
depends on its prompt alone), exports only the train side and writes the other with
:func:`write_holdout` to ``{root}/{pipeline}/holdout/ds=.../``; the deficiency-diagnosis loop
reads it from there (:mod:`infinisynth.diagnosis.diagnosis_set`).

The fraction is a setting: ``INFINISYNTH_HOLDOUT_FRACTION`` (default 0.05), or pass it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infinisynth.spill import SpilledTable
from infinisynth.storage import Manifest, Store

HOLDOUT_STAGE = "holdout"
DEFAULT_FRACTION = 0.05
# Changing the salt reshuffles every row between train and held-out: never change it casually,
# or the loop's exam leaks into training exports made before the change.
SALT = "infinisynth-holdout-v1"


def holdout_fraction(value: float | str | None = None) -> float:
    """The held-out share: ``value``, else ``INFINISYNTH_HOLDOUT_FRACTION``, else 0.05."""
    raw = value if value not in (None, "") else os.environ.get("INFINISYNTH_HOLDOUT_FRACTION", DEFAULT_FRACTION)
    try:
        fraction = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"the held-out fraction must be a number in [0, 1), got {raw!r}") from None
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    return fraction


def prompt_of(messages: list[dict[str, Any]] | None) -> str:
    """The first user turn of a chat row: what identifies the exam question."""
    for message in messages or []:
        if message.get("role") == "user":
            return message.get("content") or ""
    raise ValueError("a chat row without a user turn cannot be split (no prompt to hash)")


def bucket(prompt: str, salt: str = SALT) -> float:
    """A prompt's position in [0, 1): stable across processes and machines."""
    digest = hashlib.sha256(f"{salt}\x00{' '.join(prompt.split())}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_mask(table: pa.Table, fraction: float, salt: str = SALT) -> pa.Array:
    """True for the rows of a chat table (``messages`` column) that belong to the held-out slice."""
    if "messages" not in table.column_names:
        raise ValueError(f"a held-out split needs a 'messages' column; the table has {table.column_names}")
    fraction = holdout_fraction(fraction)
    return pa.array([bucket(prompt_of(m), salt) < fraction for m in table.column("messages").to_pylist()], pa.bool_())


def split_holdout(table: pa.Table, fraction: float | None = None, salt: str = SALT) -> tuple[pa.Table, pa.Table]:
    """(train rows, held-out rows) of a chat table; every row lands in exactly one of them."""
    mask = holdout_mask(table, holdout_fraction(fraction), salt)
    return table.filter(pc.invert(mask)), table.filter(mask)


def write_holdout(store: Store, pipeline: str, ds: str, held_out: pa.Table | SpilledTable, meta: dict[str, Any] | None = None) -> Manifest:
    """Commit the held-out rows (a table, or rows a publish step spilled as it streamed) as
    ``{pipeline}/holdout/ds={ds}`` (an empty slice still commits)."""
    body = {"pipeline": pipeline, "stage": HOLDOUT_STAGE, "ds": ds, "salt": SALT, **(meta or {})}
    partition = store.partition(pipeline, HOLDOUT_STAGE, ds)
    return partition.commit([partition.write_file(0, held_out.to_batches(), held_out.schema)], held_out.schema, body)
