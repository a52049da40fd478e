"""Coverage and depth figures on small pools whose answers are known by hand."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from infinisynth.subject.report import (
    UNASSIGNED,
    cooccurrence_degrees,
    degree_distribution,
    degree_plot_png,
    difficulty_summary,
    fit_power_law,
    network_summary,
    report_tables,
    tags_per_domain,
)

POOL = [["algebra", "proofs", "geometry"], ["algebra", "python"], ["poetry"], ["algebra", "proofs"], None, ["python", "python"]]
DOMAINS = {"algebra": "mathematics", "proofs": "mathematics", "geometry": "mathematics", "python": "programming"}


def test_tags_per_domain_counts_distinct_tags_and_rows():
    assert tags_per_domain(POOL, DOMAINS) == {
        "mathematics": {"tags": 3, "rows": 3},
        "programming": {"tags": 1, "rows": 2},
        UNASSIGNED: {"tags": 1, "rows": 1},
    }


def test_cooccurrence_degrees_count_distinct_neighbours():
    # algebra meets proofs, geometry, python; proofs meets algebra, geometry; python only algebra.
    assert cooccurrence_degrees(POOL) == {"algebra": 3, "proofs": 2, "geometry": 2, "python": 1, "poetry": 0}
    assert degree_distribution(cooccurrence_degrees(POOL).values()) == {1: 1, 2: 2, 3: 1}
    summary, _ = network_summary(POOL)
    assert (summary["tags"], summary["edges"], summary["isolated_tags"], summary["max_degree"]) == (5, 4, 1, 3)


def test_power_law_exponent_is_recovered_from_a_known_distribution():
    degrees = np.random.default_rng(7).zipf(2.5, 5000)
    fit = fit_power_law(degrees)
    assert abs(fit["alpha"] - 2.5) < 0.1 and fit["xmin"] >= 1 and 0 < fit["sigma"] < 0.1
    assert fit["loglikelihood_ratio_vs_exponential"] > 0  # heavy tail: the power law wins
    geometric = np.random.default_rng(7).geometric(0.3, 5000)
    assert fit_power_law(geometric)["loglikelihood_ratio_vs_exponential"] < 0  # a light tail does not


def test_too_few_tags_give_no_exponent_and_say_why():
    fit = fit_power_law([1, 2, 2, 3])
    assert fit["alpha"] is None and "4 connected tags" in fit["reason"]
    assert fit_power_law([3] * 50)["alpha"] is None


def test_plot_is_a_png_with_or_without_a_fit():
    degrees = np.random.default_rng(1).zipf(2.2, 2000)
    distribution = degree_distribution(degrees)
    with_fit = degree_plot_png(distribution, fit_power_law(degrees))
    without = degree_plot_png({}, {"alpha": None})
    for png in (with_fit, without):
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (600, 450)
    assert with_fit != without


def test_difficulty_before_and_after_by_generation():
    summary = difficulty_summary([(0, 3.0), (0, 5.0), (1, 6.0), (2, 8.0), (2, 7.0), (1, None)])
    assert summary["before"] == {"mean": 4.0, "rows": 2}
    assert summary["after"] == {"mean": 7.0, "rows": 3}
    assert summary["by_generation"] == {"0": {"mean": 4.0, "rows": 2}, "1": {"mean": 6.0, "rows": 1}, "2": {"mean": 7.5, "rows": 2}}
    assert summary["change"] == 3.0
    text = report_tables(
        {"pool": {"tags_per_domain": tags_per_domain(POOL, DOMAINS), "network": network_summary(POOL)[0]}, "difficulty": summary}
    )
    assert "mathematics" in text and "no power-law fit" in text and "change +3.0" in text
