"""Decontamination: rows whose prompt or response overlaps an evaluation benchmark are dropped.

Two measures, either one enough, each hit naming the benchmark and the item:

- **word n-gram overlap** (13-grams, the common standard since GPT-3): a row's prompt and its
  responses are tokenized into lowercase words (so reformatting does not hide a copy); any n-gram
  shared with a benchmark item's text (prompt, or prompt + reference solution for responses)
  counts, and the row is dropped when the shared share of the smaller side's n-grams is at least
  ``ngram_overlap`` (0: any shared n-gram). N-grams are 64-bit hashes checked in bulk per batch
  (numpy), so the cost is a pass over the rows' words, not rows x items.
- **embedding similarity** (Infinity Instruct's method): cosine of the prompt's embedding (the
  one dedup computed) to each item's prompt at least ``max_cosine``, and of the responses'
  embedding to each item's prompt + reference solution at least ``max_cosine_response``, catches
  paraphrases. Responses get their own threshold: code answers to different problems of one kind
  look more alike to MiniLM than their prompts do.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from infinisynth.release.benchmarks import BenchmarkItem
from infinisynth.release.dedup import Embedder

_WORD = re.compile(r"[a-z0-9_]+")
_BASE = np.uint64(1_000_003)


@dataclass(frozen=True)
class DecontamSettings:
    ngram: int = 13
    ngram_overlap: float = 0.0
    max_cosine: float = 0.75
    max_cosine_response: float = 0.9
    batch_size: int = 4096


@dataclass(frozen=True)
class Hit:
    row: int
    benchmark: str
    item: str
    measure: str  # ngram | embedding
    field: str  # prompt | response
    value: float  # the n-gram overlap share or the cosine


def _token_hashes(text: str) -> np.ndarray:
    words = _WORD.findall(text.lower())
    return np.fromiter((hash(w) for w in words), dtype=np.int64, count=len(words)).view(np.uint64)


def _gram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every window of ``n`` tokens (polynomial, wrapping)."""
    if len(tokens) < n:
        return np.zeros(0, dtype=np.uint64)
    length = len(tokens) - n + 1
    with np.errstate(over="ignore"):
        h = np.zeros(length, dtype=np.uint64)
        for k in range(n):
            h = h * _BASE + tokens[k : k + length]
    return h


class BenchmarkIndex:
    """The benchmark items' n-gram hashes and embeddings, for prompts (the item's text) and for
    responses (its text + reference solution)."""

    def __init__(self, items: Sequence[BenchmarkItem], embed: Embedder, settings: DecontamSettings):
        self.items = list(items)
        self.settings = settings
        self.prompt_grams = self._grams([i.text for i in self.items])
        self.response_grams = self._grams([i.solution or i.text for i in self.items])
        self.embeddings = _embed(embed, [i.text for i in self.items])
        self.response_embeddings = _embed(embed, [i.solution or i.text for i in self.items])

    def _grams(self, texts: Sequence[str]) -> tuple[dict[int, list[int]], np.ndarray, list[int]]:
        owners: dict[int, list[int]] = defaultdict(list)
        sizes = []
        for j, text in enumerate(texts):
            grams = np.unique(_gram_hashes(_token_hashes(text), self.settings.ngram))
            sizes.append(len(grams))
            for g in grams.tolist():
                owners[g].append(j)
        return owners, np.sort(np.fromiter(owners, dtype=np.uint64, count=len(owners))), sizes


def _embed(embed: Embedder, texts: Sequence[str]) -> np.ndarray:
    return np.asarray(embed(texts), dtype=np.float32) if texts else np.zeros((0, 1), np.float32)


def _embedding_hits(vectors: np.ndarray, field: str, items: np.ndarray, threshold: float, index: BenchmarkIndex, offset: int) -> list[Hit]:
    if not len(vectors) or not len(items):
        return []
    sims = np.asarray(vectors, dtype=np.float32) @ items.T
    best = sims.argmax(axis=1)
    top = sims[np.arange(len(best)), best]
    return [
        Hit(offset + i, index.items[int(best[i])].benchmark, index.items[int(best[i])].item, "embedding", field, round(float(top[i]), 4))
        for i in np.nonzero(top >= threshold)[0].tolist()
    ]


def _ngram_hits(
    texts: Sequence[str], field: str, grams: tuple[dict[int, list[int]], np.ndarray, list[int]], index: BenchmarkIndex, offset: int
) -> list[Hit]:
    """Hits of a batch of texts: every text's n-gram hashes in one array, looked up in the
    benchmark's sorted hashes at once; only texts with a shared n-gram are examined further."""
    owners, known, sizes = grams
    n = index.settings.ngram
    if not len(known) or not texts:
        return []
    tokens = [_token_hashes(text) for text in texts]
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    flat = np.concatenate(tokens) if lengths.sum() else np.zeros(0, dtype=np.uint64)
    row_of = np.repeat(np.arange(len(texts)), lengths)
    hashes = _gram_hashes(flat, n)
    if not len(hashes):
        return []
    whole = row_of[: len(hashes)] == row_of[n - 1 :]  # windows inside one text
    position = np.searchsorted(known, hashes)
    found = whole & (known[np.minimum(position, len(known) - 1)] == hashes)
    hits = []
    for i in np.unique(row_of[: len(hashes)][found]).tolist():
        row_grams = np.unique(_gram_hashes(tokens[i], n))
        shared = np.intersect1d(row_grams, known, assume_unique=True)
        per_item: dict[int, int] = defaultdict(int)
        for g in shared.tolist():
            for j in owners[g]:
                per_item[j] += 1
        j, count = max(per_item.items(), key=lambda kv: (kv[1] / max(1, min(len(row_grams), sizes[kv[0]])), -kv[0]))
        share = count / max(1, min(len(row_grams), sizes[j]))
        if share >= index.settings.ngram_overlap:
            item = index.items[j]
            hits.append(Hit(offset + i, item.benchmark, item.item, "ngram", field, round(share, 4)))
    return hits


def screen(
    prompts: Sequence[str],
    responses: Sequence[str],
    prompt_embeddings: np.ndarray,
    index: BenchmarkIndex,
    response_embeddings: np.ndarray | None = None,
    offset: int = 0,
) -> list[Hit]:
    """The first hit of every contaminated row (n-grams of the prompt, then of the responses, then
    the prompt's embedding, then the responses'), in row order; rows numbered from ``offset``."""
    if not index.items:
        return []
    found: dict[int, Hit] = {}
    size = index.settings.batch_size
    for start in range(0, len(prompts), size):
        end = min(len(prompts), start + size)
        at = offset + start
        hits = [
            *_ngram_hits(prompts[start:end], "prompt", index.prompt_grams, index, at),
            *_ngram_hits(responses[start:end], "response", index.response_grams, index, at),
            *_embedding_hits(prompt_embeddings[start:end], "prompt", index.embeddings, index.settings.max_cosine, index, at),
        ]
        if response_embeddings is not None:
            hits += _embedding_hits(
                response_embeddings[start:end], "response", index.response_embeddings, index.settings.max_cosine_response, index, at
            )
        for hit in hits:
            found.setdefault(hit.row, hit)
    return [found[row] for row in sorted(found)]
