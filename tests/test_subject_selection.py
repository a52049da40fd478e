"""Seed selection on a pool whose picks are worked out by hand (see the comments per row)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from infinisynth.subject.selection import REASONS, SelectionSettings, format_report, select_seeds

FREQUENCY = {"common": 500, "rare": 150, "edge": 200, "t1": 1000, "t2": 1000, "t3": 1000, "t4": 1000, "t5": 1000}

# id, tags, loss given the instruction, loss of the response alone.
# Scored losses (r9 has none): eight conditional losses of 1.0 and one of 5.0 -> mean 1.444,
# std 1.257, cutoff 3.908: only r8 is undertrained. Loss reductions: 2.0 ... 2.7 and r7's -0.5;
# the 10% quantile of the nine is -0.5 + 0.8 * 2.5 = 1.5: only r7 is hard to follow.
POOL = [
    ("r0", ["common"], 1.0, 3.0),  # nothing
    ("r1", ["rare"], 1.0, 3.1),  # long tail (150 < 200)
    ("r2", ["edge"], 1.0, 3.2),  # nothing: 200 is not below 200
    ("r3", ["t1", "t2", "t3", "t4"], 1.0, 3.3),  # four tags: not more than four
    ("r4", ["t1", "t2", "t3", "t4", "t5"], 1.0, 3.4),  # multi-skill
    ("r5", ["t1", "t2", "t3", "t4", "rare"], 1.0, 3.5),  # multi-skill and long tail
    ("r6", ["unknown"], 1.0, 3.6),  # unknown tags do not count as rare
    ("r7", ["common"], 1.0, 0.5),  # hard to follow: the instruction does not help (reduction -0.5)
    ("r8", ["common"], 5.0, 7.7),  # undertrained
    ("r9", ["common"], None, None),  # the base model could not score it
]


def pool() -> pa.Table:
    ids, tags, conditional, alone = zip(*POOL)
    reduction = [None if c is None else a - c for c, a in zip(conditional, alone)]
    return pa.table(
        {
            "id": list(ids),
            "tags": pa.array(list(tags), pa.list_(pa.string())),
            "loss_conditional": pa.array(list(conditional), pa.float64()),
            "loss_unconditional": pa.array(list(alone), pa.float64()),
            "loss_reduction": pa.array(reduction, pa.float64()),
        }
    )


def test_each_criterion_picks_the_rows_worked_out_by_hand():
    selection = select_seeds(pool(), FREQUENCY, SelectionSettings())

    reasons = {r["id"]: r["selection_reasons"] for r in selection.selected.to_pylist()}
    assert reasons == {
        "r1": ["long_tail"],
        "r4": ["multi_skill"],
        "r5": ["long_tail", "multi_skill"],
        "r7": ["hard_to_follow"],
        "r8": ["undertrained"],
    }
    assert sorted(selection.unselected.column("id").to_pylist()) == ["r0", "r2", "r3", "r6", "r9"]
    assert selection.unselected.column("selection_reasons").to_pylist() == [[]] * 5
    assert selection.selected.column_names == [*pool().column_names, "selection_reasons"]

    report = selection.report
    assert report["rows"] == 10 and report["selected"] == 5
    assert report["criteria"] == {
        "long_tail": {"rows": 2, "only_this": 1},
        "multi_skill": {"rows": 2, "only_this": 1},
        "undertrained": {"rows": 1, "only_this": 1},
        "hard_to_follow": {"rows": 1, "only_this": 1},
    }
    assert report["overlap"]["long_tail"]["multi_skill"] == report["overlap"]["multi_skill"]["long_tail"] == 1
    assert report["overlap"]["undertrained"]["hard_to_follow"] == 0
    assert report["combinations"] == {
        "long_tail": 1, "multi_skill": 1, "long_tail+multi_skill": 1, "undertrained": 1, "hard_to_follow": 1,
    } and list(report["combinations"].values()) == [1] * 5  # fmt: skip
    thresholds = report["thresholds"]
    assert thresholds["rows_with_losses"] == 9
    assert thresholds["undertrained_loss_above"] == pytest.approx(3.908, abs=1e-3)
    assert thresholds["hard_to_follow_reduction_at_most"] == pytest.approx(1.5)
    text = format_report(report)
    assert "5 of 10 rows selected" in text and "long_tail+multi_skill=1" in text


def test_thresholds_and_criteria_are_settings():
    loose = select_seeds(
        pool(), FREQUENCY, SelectionSettings(long_tail_frequency=201, multi_skill_tags=3, criteria=("long_tail", "multi_skill"))
    )
    reasons = {r["id"]: r["selection_reasons"] for r in loose.selected.to_pylist()}
    assert reasons == {
        "r1": ["long_tail"], "r2": ["long_tail"], "r3": ["multi_skill"], "r4": ["multi_skill"], "r5": ["long_tail", "multi_skill"],
    }  # fmt: skip
    assert set(loose.report["criteria"]) == {"long_tail", "multi_skill"}


def test_rows_without_losses_or_tags_columns():
    no_losses = pool().select(["id", "tags"])
    selection = select_seeds(no_losses, FREQUENCY)
    assert selection.report["thresholds"]["rows_with_losses"] == 0
    assert selection.report["criteria"]["undertrained"]["rows"] == 0
    with pytest.raises(ValueError, match="'tags' column"):
        select_seeds(pool().select(["id"]), FREQUENCY)
    with pytest.raises(ValueError, match="unknown selection criteria"):
        select_seeds(pool(), FREQUENCY, SelectionSettings(criteria=("novelty",)))
    empty = select_seeds(pool().slice(0, 0), FREQUENCY)
    assert empty.selected.num_rows == 0 and empty.report["selected"] == 0


def test_reason_order_is_fixed():
    assert REASONS == ("long_tail", "multi_skill", "undertrained", "hard_to_follow")
