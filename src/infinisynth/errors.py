"""Errors the library raises on purpose, for its callers to tell apart.

:class:`InputError` is a run's input that is wrong in a way no retry can fix: a malformed seed
file, an unknown language, a corpus with nothing in it. The Airflow task bodies
(:mod:`infinisynth.airflow_dag`) turn it into a failure without retries; anything else (a network
blip, a full disk) keeps the DAG's retries.
"""

from __future__ import annotations


class InputError(ValueError):
    """A run's input (a file, a Param) is unusable; the message names the input and the problem.

    Deterministic: the same input fails the same way every time, so retrying it only delays the
    failure."""
