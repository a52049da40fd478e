"""Coverage and depth figures for a subject run: pure functions over tag lists and scores.

- **Tags per domain**: distinct tags and rows per domain category.
- **Tag co-occurrence network**: tags are nodes, two tags appearing on one instruction share an
  edge; the degree distribution P(degree = d) and a discrete power-law fit P(d) ~ d^-alpha by
  maximum likelihood (Clauset, Shalizi and Newman, via the ``powerlaw`` package: alpha, xmin
  chosen by the smallest Kolmogorov-Smirnov distance, its standard error, and a log-likelihood
  ratio against an exponential, positive when the power law fits better). The paper reports a
  scale-free shape.
- **A log-log plot** of that distribution with the fitted line, as PNG bytes.
- **Difficulty** before evolution (seeds, generation 0) and after (evolved, by generation).

Degrees are computed with integer codes, rows grouped by tag count and one sort of pair keys, not
a Python set of pairs: 1.5 million rows with tens of thousands of tags take seconds and a few
hundred MB.
"""

from __future__ import annotations

import io
import warnings
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

import numpy as np

from infinisynth.llm.usage import format_table

UNASSIGNED = "(unassigned)"
MIN_FIT_NODES = 10  # fewer connected tags than this and an exponent means nothing


def tags_per_domain(tag_lists: Iterable[Sequence[str] | None], tag_domain: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """``{domain: {"tags": distinct tags seen, "rows": rows with at least one of them}}``, largest first."""
    tags: dict[str, set[str]] = defaultdict(set)
    rows: Counter[str] = Counter()
    for row_tags in tag_lists:
        seen = set()
        for tag in row_tags or []:
            domain = tag_domain.get(tag, UNASSIGNED)
            tags[domain].add(tag)
            seen.add(domain)
        rows.update(seen)
    ordered = sorted(tags, key=lambda d: (-len(tags[d]), d))
    return {d: {"tags": len(tags[d]), "rows": rows[d]} for d in ordered}


def cooccurrence_degrees(tag_lists: Iterable[Sequence[str] | None]) -> dict[str, int]:
    """Each tag's number of distinct co-occurring tags (tags never seen with another get 0)."""
    codes: dict[str, int] = {}
    # Rows grouped by tag count, as compact int64 buffers: pairs are then made per group with one
    # fancy-index, not one Python loop step per pair.
    by_length: dict[int, array] = defaultdict(lambda: array("q"))
    for row_tags in tag_lists:
        row = sorted({codes.setdefault(t, len(codes)) for t in row_tags or []})
        if len(row) >= 2:
            by_length[len(row)].extend(row)
    size = len(codes)
    keys = []
    for length, buffer in by_length.items():
        rows = np.frombuffer(buffer, dtype=np.int64).reshape(-1, length)
        a, b = np.triu_indices(length, k=1)
        keys.append((rows[:, a] * size + rows[:, b]).ravel())  # a < b within a sorted row
    degrees = np.zeros(size, dtype=np.int64)
    if keys:
        pairs = np.unique(np.concatenate(keys))
        degrees += np.bincount(pairs // size, minlength=size)
        degrees += np.bincount(pairs % size, minlength=size)
    names = sorted(codes, key=codes.__getitem__)
    return {name: int(degrees[i]) for i, name in enumerate(names)}


def degree_distribution(degrees: Iterable[int]) -> dict[int, int]:
    """``{degree: number of tags with it}`` for degrees of at least 1, ascending."""
    counts = Counter(d for d in degrees if d >= 1)
    return dict(sorted(counts.items()))


def fit_power_law(degrees: Iterable[int], min_nodes: int = MIN_FIT_NODES) -> dict[str, Any]:
    """Discrete power-law MLE of the degree distribution, or ``{"alpha": None, "reason": ...}``."""
    data = np.asarray([d for d in degrees if d >= 1], dtype=np.int64)
    if len(data) < min_nodes or len(np.unique(data)) < 2:
        return {
            "alpha": None,
            "reason": f"{len(data)} connected tags with {len(np.unique(data))} distinct degrees; a fit needs at least {min_nodes} connected tags and 2 distinct degrees",
        }
    import powerlaw  # imported here: it pulls matplotlib and mpmath, which only reports need

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its optimizer warns about initial guesses on every fit
        try:
            fit = powerlaw.Fit(data, discrete=True, verbose=False)
            ratio, p_value = fit.distribution_compare("power_law", "exponential", normalized_ratio=True)
        except (ValueError, ZeroDivisionError, FloatingPointError) as exc:
            return {"alpha": None, "reason": f"the fit failed: {exc}"}
    alpha = float(fit.power_law.alpha)
    if not np.isfinite(alpha):
        return {"alpha": None, "reason": "the fit gave no finite exponent"}
    return {
        "alpha": round(alpha, 4),
        "sigma": round(float(fit.power_law.sigma), 4),
        "xmin": int(fit.power_law.xmin),
        "ks_distance": round(float(fit.power_law.D), 4),
        "nodes": int(len(data)),
        "tail_nodes": int(np.sum(data >= fit.power_law.xmin)),
        "loglikelihood_ratio_vs_exponential": round(float(ratio), 4),
        "p_value_vs_exponential": round(float(p_value), 4),
    }


def degree_plot_png(distribution: Mapping[int, int], fit: Mapping[str, Any], title: str = "Tag co-occurrence degree distribution") -> bytes:
    """A log-log plot of P(degree = d), with the fitted power law over its tail, as PNG bytes."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in worker threads

    figure = Figure(figsize=(6, 4.5), dpi=100)
    axes = figure.add_subplot()
    total = sum(distribution.values())
    if total:
        x = np.asarray(list(distribution), dtype=float)
        y = np.asarray(list(distribution.values()), dtype=float) / total
        axes.scatter(x, y, s=14, label=f"{total} tags")
        if fit.get("alpha"):
            tail = x[x >= fit["xmin"]]
            share = fit["tail_nodes"] / total  # the fitted law describes this share of the tags
            # P(d) = share * d^-alpha / zeta(alpha, xmin): the discrete law, normalized on the tail.
            from scipy.special import zeta

            line = share * tail ** -fit["alpha"] / zeta(fit["alpha"], fit["xmin"])
            axes.plot(tail, line, color="tab:red", label=f"power law, alpha = {fit['alpha']:.2f} (d >= {fit['xmin']})")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no co-occurring tags", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("degree d (distinct co-occurring tags)")
    axes.set_ylabel("P(degree = d)")
    axes.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def network_summary(tag_lists: Sequence[Sequence[str] | None]) -> tuple[dict[str, Any], dict[int, int]]:
    """(summary with the fit, the degree distribution) of one set of rows' tags."""
    degrees = cooccurrence_degrees(tag_lists)
    distribution = degree_distribution(degrees.values())
    summary = {
        "tags": len(degrees),
        "edges": sum(degrees.values()) // 2,
        "isolated_tags": sum(1 for d in degrees.values() if d == 0),
        "max_degree": max(degrees.values(), default=0),
        "mean_degree": round(fmean(degrees.values()), 3) if degrees else 0.0,
        "power_law": fit_power_law(degrees.values()),
        "degree_distribution": {str(k): v for k, v in distribution.items()},
    }
    return summary, distribution


def difficulty_summary(scores: Iterable[tuple[int, float]]) -> dict[str, Any]:
    """Mean difficulty before (generation 0) and after evolution (every later generation), and by generation."""
    by_generation: dict[int, list[float]] = defaultdict(list)
    for generation, value in scores:
        if value is not None:
            by_generation[int(generation)].append(float(value))
    before = by_generation.get(0, [])
    after = [v for g, values in by_generation.items() if g > 0 for v in values]

    def stats(values: list[float]) -> dict[str, Any]:
        return {"mean": round(fmean(values), 3) if values else None, "rows": len(values)}

    summary: dict[str, Any] = {
        "before": stats(before),
        "after": stats(after),
        "by_generation": {str(g): stats(v) for g, v in sorted(by_generation.items())},
    }
    if before and after:
        summary["change"] = round(fmean(after) - fmean(before), 3)
    return summary


def report_tables(report: Mapping[str, Any]) -> str:
    """The report as plain-text tables for the task log."""
    parts = []
    for scope in ("pool", "dataset"):
        section = report.get(scope)
        if not section:
            continue
        rows: list[tuple[Any, ...]] = [("domain", "tags", "rows")]
        rows += [(d, v["tags"], v["rows"]) for d, v in section["tags_per_domain"].items()]
        parts.append(f"{scope}: tags per domain\n{format_table(rows)}")
        net = section["network"]
        fit = net["power_law"]
        fit_text = (
            f"alpha = {fit['alpha']} +- {fit['sigma']} for degree >= {fit['xmin']} ({fit['tail_nodes']} of {fit['nodes']} tags), "
            f"KS {fit['ks_distance']}, log-likelihood ratio vs exponential {fit['loglikelihood_ratio_vs_exponential']} (p {fit['p_value_vs_exponential']})"
            if fit.get("alpha")
            else f"no power-law fit: {fit['reason']}"
        )
        parts.append(
            f"{scope}: tag co-occurrence network: {net['tags']} tags, {net['edges']} edges, max degree {net['max_degree']}, "
            f"mean degree {net['mean_degree']}; {fit_text}"
        )
    difficulty = report.get("difficulty")
    if difficulty:
        rows = [("generation", "mean difficulty", "rows")]
        rows += [(g, v["mean"], v["rows"]) for g, v in difficulty["by_generation"].items()]
        change = difficulty.get("change")
        parts.append(
            f"difficulty before evolution {difficulty['before']['mean']} (n={difficulty['before']['rows']}), "
            f"after {difficulty['after']['mean']} (n={difficulty['after']['rows']})"
            + (f", change {change:+}" if change is not None else "")
            + f"\n{format_table(rows)}"
        )
    return "\n\n".join(parts)
