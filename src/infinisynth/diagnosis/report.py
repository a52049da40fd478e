"""The iteration report: the deficiency ranking, accuracy on the set, and both across iterations.

Written next to the data as ``{root}/diagnosis/reports/{partition}/report.md`` and
``accuracy.png`` (matplotlib, headless), and printed to the task log. The plot has two panels:
accuracy per iteration (labelled with the model), and the failure count of each of the latest
iteration's top groups in every iteration, so a user sees whether a new model version improved
where the previous one was weak.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import pyarrow as pa

from infinisynth.llm.usage import format_table
from infinisynth.storage import Store

TOP = 8
BAR = 30


def ranking_table(groups: pa.Table, top: int = TOP) -> str:
    rows: list[tuple[Any, ...]] = [("rank", "knowledge area", "skill", "error type", "failures", "severity", "weight", "share")]
    for g in groups.to_pylist()[:top]:
        rows.append(
            (
                g["rank"],
                g["knowledge_area"],
                g["skill"],
                g["error_type"],
                g["failures"],
                g["severity_mean"],
                g["weight"],
                f"{100 * g['share']:.0f}%",
            )
        )
    if len(rows) == 1:
        return "no deficiencies: every judged answer was correct"
    return format_table(rows)


def history_table(history: list[dict[str, Any]]) -> str:
    rows: list[tuple[Any, ...]] = [("iteration", "model", "previous", "judged", "accuracy", "top deficiency", "targeted rows")]
    for h in history:
        ranking = json.loads(h["ranking_json"] or "[]")
        top = f"{ranking[0]['knowledge_area']}: {ranking[0]['skill']}" if ranking else "-"
        accuracy = "-" if h["accuracy"] is None else f"{100 * h['accuracy']:.1f}%"
        rows.append(
            (
                h["iteration"],
                h["target_model"],
                h["previous_iteration"] or "-",
                h["judged"] if h["judged"] is not None else "-",
                accuracy,
                top[:60],
                h["targeted_published"] if h["targeted_published"] is not None else "-",
            )
        )
    return format_table(rows)


def accuracy_chart(history: list[dict[str, Any]]) -> str:
    """Accuracy per iteration as text bars, for the task log."""
    lines = []
    for h in history:
        if h["accuracy"] is None:
            continue
        filled = round(BAR * h["accuracy"])
        lines.append(
            f"iter {h['iteration']:>3} {h['target_model'][:24]:<24} |{'#' * filled}{'.' * (BAR - filled)}| {100 * h['accuracy']:5.1f}%"
        )
    return "\n".join(lines) or "(no finished iteration yet)"


def group_trend(history: list[dict[str, Any]], group_ids: list[str]) -> dict[str, list[int]]:
    """Failures of each group in each finished iteration (0 where it did not appear)."""
    finished = [h for h in history if h["ranking_json"] is not None]
    trend = {}
    for gid in group_ids:
        trend[gid] = [next((g["failures"] for g in json.loads(h["ranking_json"]) if g["group_id"] == gid), 0) for h in finished]
    return trend


def plot_png(history: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [h for h in history if h["accuracy"] is not None]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), constrained_layout=True)
    xs = [h["iteration"] for h in finished]
    top.plot(xs, [100 * h["accuracy"] for h in finished], marker="o")
    for h in finished:
        top.annotate(
            h["target_model"][:20],
            (h["iteration"], 100 * h["accuracy"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    top.set(title="Accuracy on the diagnosis set", xlabel="iteration", ylabel="% correct", ylim=(0, 105))
    latest = json.loads(finished[-1]["ranking_json"] or "[]")[:5] if finished else []
    for group, counts in zip(latest, group_trend(history, [g["group_id"] for g in latest]).values()):
        bottom.plot(xs, counts, marker="o", label=f"{group['knowledge_area']}: {group['skill']}"[:60])
    bottom.set(title="Failures per deficiency group (latest top groups)", xlabel="iteration", ylabel="failures")
    if latest:
        bottom.legend(fontsize=7)
    for axis in (top, bottom):
        axis.set_xticks(xs)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def render(iteration: dict[str, Any], groups: pa.Table, history: list[dict[str, Any]], funnel: str) -> str:
    accuracy = "-" if iteration["accuracy"] is None else f"{100 * iteration['accuracy']:.1f}%"
    return "\n".join(
        [
            f"# Deficiency diagnosis, iteration {iteration['iteration']}",
            "",
            f"model `{iteration['target_model']}` at {iteration['target_base_url']} "
            f"(trigger: {iteration['trigger']}; previous iteration: {iteration['previous_iteration'] or 'none'})",
            f"accuracy on the diagnosis set: {accuracy} ({iteration['correct']} of {iteration['judged']} judged; "
            f"{iteration['diagnosis_rows']} prompts from {iteration['diagnosis_source']})",
            f"checked by: reference {iteration.get('reference_checked') or 0} (an exact answer key, no model; "
            f"the oracle's own verdict differed on {iteration.get('oracle_overruled') or 0}), "
            f"oracle {(iteration['judged'] or 0) - (iteration.get('reference_checked') or 0)}",
            "",
            "## Deficiency ranking",
            "```",
            ranking_table(groups),
            "```",
            "## Across iterations",
            "```",
            history_table(history),
            "",
            accuracy_chart(history),
            "```",
            "![accuracy](accuracy.png)",
            "## Funnel",
            "```",
            funnel,
            "```",
        ]
    )


def write(store: Store, partition: str, text: str, png: bytes) -> str:
    """Save the report and its plot; return the report's URL."""
    directory = posixpath.join(store.root, "diagnosis", "reports", partition)
    store.fs.makedirs(directory, exist_ok=True)
    store.fs.pipe_file(posixpath.join(directory, "accuracy.png"), png)
    store.fs.pipe_file(posixpath.join(directory, "report.md"), text.encode("utf-8"))
    return store.url(posixpath.join(directory, "report.md"))


def latest_report(store: Store) -> str:
    """The newest finished iteration's report text, for the console."""
    from infinisynth.diagnosis.iterations import history

    finished = [h for h in history(store) if h["status"] == "complete"]
    if not finished:
        return "no finished diagnosis iteration"
    path = posixpath.join(store.root, "diagnosis", "reports", finished[-1]["partition"], "report.md")
    return store.fs.cat_file(path).decode("utf-8")
