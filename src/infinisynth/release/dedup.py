"""Duplicates: exact, near (MinHash LSH) and semantic (embedding nearest neighbours).

Rows are taken in order (the caller's priority: published rows first); the first of a group is
kept and every later member is dropped with the method that caught it and the id it duplicates:

- **exact**: the same normalized instruction (lowercased words, punctuation and whitespace gone);
- **near**: MinHash (word 3-shingles) Jaccard estimate above ``near_threshold``, found through
  LSH (datasketch) without comparing all pairs; the seed miner uses the same index
  (:class:`NearDuplicates`);
- **semantic**: cosine of the instructions' embeddings at least ``semantic_threshold``, the
  nearest kept neighbour found in a usearch HNSW index (approximate; vectors quantized to 8 bits,
  ~660 bytes a row with the graph), so it scales to millions of rows; within a batch, exactly.

The same checks run against earlier releases: their index (exact hash, MinHash signature,
embedding of every released row) is loaded first, so a row released before is dropped as a
duplicate of that release's row. Embeddings come from a function the caller passes (MiniLM in a
run, anything in tests and benchmarks), computed once per batch.

Rows come in batches (:class:`Deduplicator`), and what is kept per row is off the heap but for
~10 bytes (ids' offsets and release numbers):

- exact keys and LSH band keys: 8-byte hashes in sorted numpy runs (:class:`HashRuns`, ~16 bytes
  an entry); a run that stopped growing is written to a scratch file and memory-mapped;
- MinHash signatures (uint32, 256 bytes) and ids: a scratch file read back only for candidates;
- the HNSW index in segments: the current one in memory until it holds ``segment_rows`` rows,
  then saved and a new one started; every segment and every earlier release's saved segments are
  searched (:meth:`ReleasedIndex.nearest`), each memory-mapped (``usearch`` ``view``) only while a
  batch searches it: usearch builds ~65 bytes a row in memory for every open view.

Memory-mapped pages are file-backed: the kernel drops them under pressure, so the anonymous
memory (what the process itself holds) grows by those ~10 bytes a row only; the in-memory
segment's graph (~660 bytes a row, ``segment_rows`` rows at most) is the largest thing on the heap.

A release publishes its dedup step's HNSW segments as they are and, beside its index table, the
HNSW keys of its released rows in index-row order (sorted: keys are given in row order): a later
release maps a found key to the index row with a memory-mapped ``searchsorted``, and a key that
is not there (a row decontamination dropped after dedup kept it) is no match.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

_WORD = re.compile(r"[a-z0-9_]+")
_TOKEN = re.compile(r"\w+|[^\w\s]")
NUM_PERM = 64
MINHASH_SEED, MINHASH_SCHEME = 1, "affine32"  # stored signatures are only comparable under the same ones
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
EMBEDDING_TYPE = pa.list_(pa.float16(), EMBEDDING_DIM)
ANN_BASE = 1 << 40  # releases published before key maps: HNSW keys renamed to ANN_BASE + the row of the index table
SEGMENT_ROWS = 300_000  # rows of an in-memory HNSW segment (~200 MB with i8 vectors) before it is saved and mapped
CONNECTIVITY = 32  # HNSW neighbours a node keeps: see _hnsw
MAPPED_K = 4  # neighbours asked of a key-mapped view: the nearest may be a row that was not released

Embedder = Callable[[Sequence[str]], np.ndarray]

INDEX_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("exact", pa.string(), nullable=False),
        pa.field("minhash", pa.list_(pa.uint64(), NUM_PERM), nullable=False),
        pa.field("embedding", EMBEDDING_TYPE),
    ]
)


def normalize(text: str) -> str:
    """Lowercased words only: formatting, punctuation and case never make two rows different."""
    return " ".join(_WORD.findall(text.lower()))


def exact_key(text: str) -> str:
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()[:32]


def shingles(text: str, size: int = 3, tokens: re.Pattern[str] = _WORD) -> set[str]:
    words = tokens.findall(text.lower() if tokens is _WORD else text)
    return {" ".join(words[i : i + size]) for i in range(max(1, len(words) - size + 1))}


@lru_cache(maxsize=4)
def _permutations(num_perm: int) -> Any:
    return MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME).permutations


def minhash(items: set[str], num_perm: int = NUM_PERM) -> LeanMinHash:
    """The MinHash signature (permutations made once: making them is most of a small signature's cost)."""
    m = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME, permutations=_permutations(num_perm))
    m.update_batch([s.encode("utf-8") for s in items])
    return LeanMinHash(m)


class NearDuplicates:
    """A MinHash LSH index of texts seen so far: ``first(m)`` names an indexed text whose estimated
    Jaccard similarity to ``m`` is above the threshold (LSH candidates, checked on the signature)."""

    def __init__(self, threshold: float = 0.8, num_perm: int = NUM_PERM):
        self.threshold = threshold
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.signatures: dict[str, LeanMinHash] = {}

    def first(self, m: LeanMinHash) -> tuple[str, float] | None:
        best: tuple[str, float] | None = None
        for key in self.lsh.query(m):
            similarity = m.jaccard(self.signatures[key])
            if similarity >= self.threshold and (best is None or similarity > best[1] or (similarity == best[1] and key < best[0])):
                best = (key, similarity)
        return best

    def add(self, key: str, m: LeanMinHash) -> None:
        if key not in self.signatures:
            self.lsh.insert(key, m)
            self.signatures[key] = m


class SeenTexts:
    """Exact (whitespace-normalized) and near (MinHash LSH over token 3-shingles) duplicates of the
    texts seen so far: the seed miner's deduplicator (code snippets keep their punctuation)."""

    def __init__(self, near_threshold: float = 0.8, num_perm: int = NUM_PERM):
        self.hashes: set[str] = set()
        self.near = NearDuplicates(near_threshold, num_perm)

    def check(self, text: str) -> str | None:
        """``exact`` or ``near`` if ``text`` duplicates one seen before; else None, and remember it."""
        digest = hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()
        if digest in self.hashes:
            return "exact"
        m = minhash(shingles(text, 3, _TOKEN), self.near.num_perm)
        if self.near.first(m) is not None:
            return "near"
        self.hashes.add(digest)
        self.near.add(digest, m)
        return None


@dataclass(frozen=True)
class DedupSettings:
    near_threshold: float = 0.7
    semantic_threshold: float = 0.92
    batch_size: int = 1024
    segment_rows: int = SEGMENT_ROWS


@dataclass(frozen=True)
class Duplicate:
    """A dropped row: which method caught it, the row it duplicates (and that row's release when
    it was released before), and how similar they are."""

    row: int
    method: str  # exact | near | semantic
    counterpart: str
    similarity: float
    release: str | None = None


@dataclass
class DedupResult:
    keep: np.ndarray  # bool per input row
    duplicates: list[Duplicate]
    embeddings: np.ndarray  # float16, one per input row
    index: pa.Table  # INDEX_SCHEMA rows of the kept rows: what later releases dedup against
    counts: dict[str, int] = field(default_factory=dict)


def hash64(values: Sequence[str]) -> np.ndarray:
    """Stable 8-byte hashes (blake2b) of strings."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest(), "little") for v in values),
        dtype=np.uint64,
        count=len(values),
    )


def _mapped(array: np.ndarray, directory: str | None) -> np.ndarray:
    """``array`` written to an (unlinked) scratch file and memory-mapped read-only: its pages are
    file-backed, so they leave the process's anonymous memory."""
    with tempfile.TemporaryFile(prefix="infinisynth-runs-", dir=directory) as fh:
        array.tofile(fh)
        fh.flush()
        return np.memmap(fh, dtype=array.dtype, mode="r", shape=array.shape)  # the mapping outlives the closed file


class HashRuns:
    """A multimap from 8-byte hashes to int64 keys in sorted numpy runs (an LSM tree): ~16 bytes
    an entry, appends in bulk, lookups vectorized with ``searchsorted``.

    Runs merge geometrically up to ``max_run`` entries and no further: a merge briefly holds about
    three copies of what it merges, so an unbounded last merge would spike memory by ~3x the whole
    map; capped, the spike is ~3x ``max_run`` (96 MB) and a lookup probes one more run per
    ``max_run`` entries. A run above half of ``max_run`` rarely merges again, so it moves to a
    memory-mapped scratch file in ``spill_dir`` (a later merge reads it back, and maps the result)."""

    def __init__(self, max_run: int = 1 << 21, spill_dir: str | None = None) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self.max_run = max_run
        self.spill_dir = spill_dir

    def __len__(self) -> int:
        return sum(len(h) for h, _ in self.runs)

    def add(self, hashes: np.ndarray, keys: np.ndarray) -> None:
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        self.runs.append((np.asarray(hashes, np.uint64)[order], np.asarray(keys, np.int64)[order]))
        while (  # geometric merges: O(n log n) in all
            len(self.runs) > 1
            and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0])
            and len(self.runs[-2][0]) + len(self.runs[-1][0]) <= self.max_run
        ):
            (h1, k1), (h2, k2) = self.runs[-2], self.runs[-1]
            h, k = np.concatenate([h1, h2]), np.concatenate([k1, k2])
            order = np.lexsort((k, h))
            self.runs[-2:] = [(h[order], k[order])]
        self.runs = [self._spilled(h, k) for h, k in self.runs]

    def _spilled(self, hashes: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(hashes, np.memmap) or 2 * len(hashes) <= self.max_run:
            return hashes, keys
        return _mapped(hashes, self.spill_dir), _mapped(keys, self.spill_dir)

    def find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (query position, key) whose hash matches, in no particular order."""
        queries: list[np.ndarray] = []
        keys: list[np.ndarray] = []
        for h, k in self.runs:
            lo, hi = np.searchsorted(h, hashes, "left"), np.searchsorted(h, hashes, "right")
            counts = hi - lo
            if not counts.any():
                continue
            q = np.repeat(np.arange(len(hashes)), counts)
            starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
            queries.append(q)
            keys.append(k[starts + np.arange(len(q))])
        if not queries:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(queries), np.concatenate(keys)


class _Scratch:
    """Fixed-size records (signatures) and strings (ids) by key in a temporary file: written once,
    read back only for the few keys a duplicate check needs, so they never sit on the heap."""

    def __init__(self, record_bytes: int):
        self.record_bytes = record_bytes
        self.file = tempfile.TemporaryFile(prefix="infinisynth-dedup-")
        self.size = 0

    def append(self, data: bytes) -> int:
        os.pwrite(self.file.fileno(), data, self.size)
        start = self.size
        self.size += len(data)
        return start

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.file.fileno(), length, offset)


@dataclass(frozen=True)
class Segment:
    """A searched HNSW index and how its keys become this index's: ``offset`` + the found key, or
    with ``key_map`` (the sorted keys of the rows a release published) ``offset`` + the key's
    position in the map, no match when it is not there. ``index``: the in-memory segment; a saved
    one (``path``) is memory-mapped only while a batch searches it (:meth:`opened`)."""

    index: Any
    offset: int
    key_map: np.ndarray | None = None
    path: str | None = None
    size: int = 0  # rows of a saved segment

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else self.size

    @contextmanager
    def opened(self) -> Iterator[Any]:
        """The index to search. A saved one is mapped for the search and let go after: usearch
        builds its node offsets and key lookup in memory for every view (~65 bytes a row), so
        views kept open grew the heap with the rows; mapping a 300,000-row segment takes ~20 ms,
        next to ~5 s to search a batch of 4,096 in it."""
        if self.index is not None:
            yield self.index
            return
        index = _open_view(self.path or "")
        index.expansion_search = search_depth(index.connectivity)
        try:
            yield index
        finally:
            del index


def _open_view(path: str) -> Any:
    from usearch.index import Index

    index = Index.restore(path, view=True)
    if index is None:
        raise ValueError(f"{path}: not a usearch index")
    return index


def search_depth(connectivity: int) -> int:
    """The search depth (usearch ``expansion_search``) for a graph of this connectivity: the one
    at which it finds ~99% of near copies (cosine ~0.96) among 200,000 vectors with a little
    structure (``benchmarks/bench_hnsw.py``); segments saved before connectivity 32 were built at
    usearch's default, 16."""
    return 64 if connectivity >= CONNECTIVITY else 256


def _hnsw(dim: int, connectivity: int = CONNECTIVITY) -> Any:
    from usearch.index import Index

    # 8-bit vectors: 4x smaller and ~7x faster to build than f16 on CPUs without f16 arithmetic
    # (cosine error ~0.01); expansion_add 64 halves the build time of the default 128.
    # Connectivity 32 over the default 16: every query searches every segment, so search is what
    # counts. At depth 64 it finds as many near copies as 16 does at 256 in under half the time
    # (benchmarks/bench_hnsw.py; on structureless random vectors, HNSW's worst case, 90% against
    # 93%); building costs ~2x and the graph 660 bytes a row instead of 533.
    return Index(
        ndim=dim, metric="cos", dtype="i8", connectivity=connectivity, expansion_add=64, expansion_search=search_depth(connectivity)
    )


def _as_rows(matches: Any, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """usearch matches as (n, k) keys, cosines and found flags (one query gives ``Matches`` with
    only the found neighbours, several give ``BatchMatches`` with ``counts``)."""
    keys, sims, found = np.zeros((n, k), np.uint64), np.full((n, k), -np.inf, np.float32), np.zeros((n, k), bool)
    counts = getattr(matches, "counts", None)
    got = np.asarray(counts).reshape(n) if counts is not None else np.array([len(matches)])
    width = min(k, np.asarray(matches.keys).reshape(n, -1).shape[1])
    keys[:, :width] = np.asarray(matches.keys).reshape(n, -1)[:, :width]
    sims[:, :width] = 1.0 - np.asarray(matches.distances, dtype=np.float32).reshape(n, -1)[:, :width]
    found[:, :width] = np.arange(width) < got[:, None]
    return keys, sims, found


def _mapped_keys(segment: Segment, keys: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Found HNSW keys as this index's keys, and which of them are rows (a key missing from a
    release's key map is a row it did not publish: no match)."""
    if segment.key_map is None:
        return keys.astype(np.int64) + segment.offset, found
    key_map = segment.key_map
    if not len(key_map):
        return np.zeros_like(keys, np.int64), np.zeros_like(found)
    at = np.searchsorted(key_map, keys)
    published = found & (at < len(key_map)) & (key_map[np.minimum(at, len(key_map) - 1)] == keys)
    return at.astype(np.int64) + segment.offset, published


class ReleasedIndex:
    """Everything kept so far (earlier releases first): exact keys, MinHash LSH, usearch HNSW.

    Keys are ordinals in the order rows were registered. Earlier releases whose HNSW index was
    saved are searched memory-mapped (:meth:`view`); the rest go into the in-memory segment,
    which is saved to ``segment_dir`` and memory-mapped whenever it holds ``segment_rows`` rows
    (:meth:`seal`; :attr:`segments` lists the saved files, keys as registered).
    """

    def __init__(self, settings: DedupSettings, dim: int = EMBEDDING_DIM, segment_dir: str | None = None, segment_prefix: str = "segment"):
        self.settings = settings
        self.dim = dim
        if segment_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="infinisynth-hnsw-")  # lives as long as the index
            segment_dir = self._own_dir.name
        self.segment_dir, self.segment_prefix = segment_dir, segment_prefix
        self.segments: list[str] = []  # this index's saved segments, in order
        self.exact = HashRuns()  # spilled runs: unlinked temporary files, like the signatures'
        self.bands = HashRuns()
        # bands weighted for recall (datasketch's default weights miss 43% of pairs at Jaccard 0.75):
        # at threshold 0.7 this is 12 bands of 5 rows, finding 89% of pairs at 0.7, 96% at 0.75, 99% at 0.8;
        # every candidate is checked on its signature, so the extra candidates cost time, not precision
        self.num_bands, self.band_rows = _optimal_param(settings.near_threshold, NUM_PERM, 0.1, 0.9)
        self._band_mix = np.random.default_rng(12345).integers(1, 2**63, size=(self.num_bands, self.band_rows), dtype=np.uint64) | 1
        self.ann = _hnsw(dim)  # the in-memory segment
        self.views: list[Segment] = []  # memory-mapped: earlier releases' segments and this index's saved ones
        self.signatures = _Scratch(NUM_PERM * 4)
        self.names = _Scratch(1)
        self.name_at = np.zeros(0, np.int64)  # per key: (offset << 16) | length of its id in ``names``
        self.release_of = np.zeros(0, np.int16)  # per key: index into ``releases`` (0: this release)
        self.releases: list[str | None] = [None]
        self.count = 0

    def __len__(self) -> int:
        return self.count

    # -- keys ----------------------------------------------------------------------------------

    def id_of(self, key: int) -> str:
        packed = int(self.name_at[key])
        return self.names.read(packed >> 16, packed & 0xFFFF).decode("utf-8")

    def release_at(self, key: int) -> str | None:
        return self.releases[int(self.release_of[key])]

    def signature(self, key: int) -> np.ndarray:
        return np.frombuffer(self.signatures.read(key * NUM_PERM * 4, NUM_PERM * 4), dtype=np.uint32)

    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """(rows, bands) 8-byte keys of each LSH band (band index mixed in)."""
        sig = np.asarray(signatures, dtype=np.uint64)[:, : self.num_bands * self.band_rows].reshape(-1, self.num_bands, self.band_rows)
        with np.errstate(over="ignore"):
            h = (sig * self._band_mix).sum(axis=2, dtype=np.uint64)
            h ^= (np.arange(self.num_bands, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        return h

    def register_many(self, ids: Sequence[str], exact: np.ndarray, signatures: np.ndarray, release: str | None) -> np.ndarray:
        """Index rows' exact keys, MinHash bands, signatures and ids; their keys. Embeddings go in
        with :meth:`add_vectors` (or the release's saved index with :meth:`view`)."""
        n = len(ids)
        keys = np.arange(self.count, self.count + n, dtype=np.int64)
        if not n:
            return keys
        if release not in self.releases:
            self.releases.append(release)
        encoded = [i.encode("utf-8") for i in ids]
        start = self.names.append(b"".join(encoded))
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=n)
        offsets = start + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.name_at = np.concatenate([self.name_at, (offsets << 16) | lengths])
        self.release_of = np.concatenate([self.release_of, np.full(n, self.releases.index(release), np.int16)])
        self.signatures.append(np.ascontiguousarray(signatures, dtype=np.uint32).tobytes())
        self.exact.add(np.asarray(exact, np.uint64), keys)
        bands = self.band_hashes(signatures)
        self.bands.add(bands.reshape(-1), np.repeat(keys, self.num_bands))
        self.count += n
        return keys

    def add_vectors(self, keys: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Into the in-memory segment, sealing it whenever it holds ``segment_rows`` rows."""
        keys, vectors = np.asarray(keys, dtype=np.uint64), np.asarray(vectors, dtype=np.float32)
        while len(keys):
            room = max(1, self.settings.segment_rows - len(self.ann))
            self.ann.add(keys[:room], vectors[:room])
            keys, vectors = keys[room:], vectors[room:]
            if len(self.ann) >= self.settings.segment_rows:
                self.seal()

    def seal(self) -> list[str]:
        """Save the in-memory segment (if it holds rows) to ``segment_dir``, search it memory-mapped
        from now on and start an empty one; every saved segment's path."""
        if len(self.ann):
            path = os.path.join(self.segment_dir, f"{self.segment_prefix}-{len(self.segments):04d}.usearch")
            self.ann.save(path)
            self.ann = _hnsw(self.dim)
            self.segments.append(path)
            self.view(path, 0, key_map=None, renamed=False)
        return list(self.segments)

    def view(self, path: str, first_key: int, key_map: np.ndarray | None = None, renamed: bool = True) -> None:
        """A saved HNSW index, memory-mapped. An earlier release's: with ``key_map`` (its published
        keys, sorted), a found key is this index's ``first_key`` + its position in the map; without,
        the old layout (``renamed``: keys ``ANN_BASE + row``) gives ``first_key + row``."""
        size = len(_open_view(path))  # checked now; mapped again by each search (Segment.opened)
        offset = first_key - (ANN_BASE if renamed and key_map is None else 0)
        self.views.append(Segment(None, offset, key_map, path=path, size=size))

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(key, cosine) of each vector's nearest indexed row; key -1 when the index is empty."""
        n = len(vectors)
        best_keys = np.full(n, -1, dtype=np.int64)
        best = np.full(n, -np.inf, dtype=np.float32)
        if not n:
            return best_keys, np.zeros(0, np.float32)
        queries = np.asarray(vectors, dtype=np.float32)
        for segment in [Segment(self.ann, 0), *self.views]:
            if len(segment) == 0:
                continue
            # a release's segments hold the rows decontamination dropped after dedup too: asking
            # for a few neighbours finds the nearest *published* one behind such a row at no real
            # cost (the search's depth, not k, sets its work); a view of published rows only: 1
            partial = segment.key_map is not None and len(segment.key_map) < len(segment)
            k = min(MAPPED_K, len(segment)) if partial else 1
            with segment.opened() as index:
                found_keys, sims, found = _as_rows(index.search(queries, k), n, k)
            keys, found = _mapped_keys(segment, found_keys, found)
            sims = np.where(found, sims, -np.inf)
            column = np.argmax(sims, axis=1)  # the nearest published neighbour (first of a tie)
            rows = np.arange(n)
            better = found[rows, column] & (sims[rows, column] > best)
            best_keys[better], best[better] = keys[rows, column][better], sims[rows, column][better]
        return best_keys, np.where(best_keys >= 0, best, 0.0).astype(np.float32)

    # -- earlier releases ------------------------------------------------------------------------

    def load(
        self,
        table: pa.Table | Iterator[pa.RecordBatch],
        release: str,
        ann_path: str | Sequence[str] | None = None,
        key_map: np.ndarray | None = None,
    ) -> None:
        """An earlier release's index (:data:`INDEX_SCHEMA` rows, a table or batches); with
        ``ann_path``, its saved HNSW segments are memory-mapped instead of rebuilt: with
        ``key_map`` (the published rows' HNSW keys in row order, e.g. ``np.load(mmap_mode="r")``),
        else one file whose keys were renamed to ``ANN_BASE`` + row (releases before key maps)."""
        first = self.count
        batches = table.to_batches() if isinstance(table, pa.Table) else table
        for batch in batches:
            if batch.num_rows == 0:
                continue
            signatures = np.asarray(batch.column("minhash").flatten().to_numpy(), dtype=np.uint32).reshape(-1, NUM_PERM)
            exact = np.array([int(e[:16], 16) for e in batch.column("exact").to_pylist()], dtype=np.uint64)
            keys = self.register_many(batch.column("id").to_pylist(), exact, signatures, release)
            if ann_path is None:
                embeddings = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
                self.add_vectors(keys, np.asarray(embeddings, dtype=np.float32).reshape(len(keys), -1))
        if ann_path is not None and self.count > first:
            for path in [ann_path] if isinstance(ann_path, str) else ann_path:
                self.view(path, first, key_map)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass
class BatchResult:
    """One batch's verdicts: rows are positions in the batch."""

    keep: np.ndarray
    duplicates: list[Duplicate]
    exact: list[str]  # of the kept rows
    signatures: np.ndarray  # (kept, NUM_PERM) uint32
    embeddings: np.ndarray  # (kept, dim) float16
    keys: np.ndarray  # the kept rows' keys in the index (their order of registration)


class Deduplicator:
    """Batch after batch, the first of every group of duplicates is kept (against everything
    registered before: earlier releases and earlier batches) and every later member is dropped."""

    def __init__(self, embed: Embedder, settings: DedupSettings, index: ReleasedIndex | None = None):
        self.embed = embed
        self.settings = settings
        self.index = index if index is not None else ReleasedIndex(settings)
        self.counts = {"kept": 0, "exact": 0, "near": 0, "semantic": 0}

    def batch(self, ids: Sequence[str], texts: Sequence[str]) -> BatchResult:
        index = self.index
        n = len(texts)
        vectors = np.asarray(self.embed(list(texts)), dtype=np.float32) if n else np.zeros((0, index.dim), np.float32)
        exact_keys = [exact_key(t) for t in texts]
        exact = np.array([int(e[:16], 16) for e in exact_keys], dtype=np.uint64)
        signatures = (
            np.stack([minhash(shingles(normalize(t))).hashvalues for t in texts]).astype(np.uint32)
            if n
            else np.zeros((0, NUM_PERM), np.uint32)
        )
        bands = index.band_hashes(signatures)
        # against everything registered before this batch, at once
        exact_prior: dict[int, int] = {}
        for q, k in zip(*index.exact.find(exact)):
            exact_prior[int(q)] = min(int(k), exact_prior.get(int(q), int(k)))
        band_q, band_k = index.bands.find(bands.reshape(-1))
        near_prior: dict[int, set[int]] = {}
        for q, k in zip((band_q // index.num_bands).tolist(), band_k.tolist()):
            near_prior.setdefault(q, set()).add(k)
        prior_keys, prior_sims = index.nearest(vectors)
        within = vectors @ vectors.T  # this batch, exactly
        # then in order, against this batch's earlier kept rows
        seen_exact: dict[int, int] = {}
        seen_bands: dict[int, list[int]] = {}
        keep = np.zeros(n, dtype=bool)
        kept: list[int] = []
        duplicates: list[Duplicate] = []
        for i in range(n):
            found: tuple[str, float, str | None] | None = None
            method = "exact"
            if i in exact_prior:
                k = exact_prior[i]
                found = (index.id_of(k), 1.0, index.release_at(k))
            elif int(exact[i]) in seen_exact:
                found = (ids[seen_exact[int(exact[i])]], 1.0, None)
            if found is None:
                method = "near"
                found = self._near(
                    i, signatures, near_prior.get(i, set()), [j for b in bands[i].tolist() for j in seen_bands.get(b, [])], ids
                )
            if found is None:
                method = "semantic"
                found = self._semantic(int(prior_keys[i]), float(prior_sims[i]), within[i], kept, ids)
            if found is not None:
                counterpart, similarity, release = found
                duplicates.append(Duplicate(i, method, counterpart, round(similarity, 4), release))
                self.counts[method] += 1
                continue
            keep[i] = True
            kept.append(i)
            seen_exact.setdefault(int(exact[i]), i)
            for b in bands[i].tolist():
                seen_bands.setdefault(b, []).append(i)
        rows = np.asarray(kept, dtype=np.int64)
        keys = index.register_many([ids[i] for i in kept], exact[rows], signatures[rows], None)
        index.add_vectors(keys, vectors[rows])
        self.counts["kept"] += len(kept)
        return BatchResult(keep, duplicates, [exact_keys[i] for i in kept], signatures[rows], vectors[rows].astype(np.float16), keys)

    def _near(
        self, i: int, signatures: np.ndarray, prior: set[int], within: list[int], ids: Sequence[str]
    ) -> tuple[str, float, str | None] | None:
        best: tuple[float, int, int] | None = None  # (similarity, -source, key or row): earliest wins a tie
        for key in sorted(prior):
            similarity = float(np.mean(self.index.signature(key) == signatures[i]))
            if similarity >= self.settings.near_threshold and (best is None or similarity > best[0]):
                best = (similarity, 0, key)
        for j in sorted(set(within)):
            similarity = float(np.mean(signatures[j] == signatures[i]))
            if similarity >= self.settings.near_threshold and (best is None or similarity > best[0]):
                best = (similarity, 1, j)
        if best is None:
            return None
        similarity, source, at = best
        if source == 0:
            return self.index.id_of(at), similarity, self.index.release_at(at)
        return ids[at], similarity, None

    def _semantic(
        self, prior_key: int, prior_sim: float, within: np.ndarray, kept: list[int], ids: Sequence[str]
    ) -> tuple[str, float, str | None] | None:
        best: tuple[str, float, str | None] | None = None
        if prior_key >= 0 and prior_sim >= self.settings.semantic_threshold:
            best = (self.index.id_of(prior_key), prior_sim, self.index.release_at(prior_key))
        if kept:
            sims = within[kept]
            j = int(np.argmax(sims))
            if sims[j] >= self.settings.semantic_threshold and (best is None or sims[j] > best[1]):
                best = (ids[kept[j]], float(sims[j]), None)
        return best


def index_table(ids: Sequence[str], exact: Sequence[str], signatures: np.ndarray, embeddings: np.ndarray) -> pa.Table:
    """:data:`INDEX_SCHEMA` rows (what later releases dedup against)."""
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(list(ids), pa.string()),
            "exact": pa.array(list(exact), pa.string()),
            "minhash": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(signatures, np.uint64).reshape(-1), pa.uint64()), NUM_PERM)
            if n
            else pa.array([], pa.list_(pa.uint64(), NUM_PERM)),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.asarray(embeddings, np.float16).reshape(-1), pa.float16()), EMBEDDING_DIM
            )
            if n
            else pa.array([], EMBEDDING_TYPE),
        },
        schema=INDEX_SCHEMA,
    )


def deduplicate(
    ids: Sequence[str], texts: Sequence[str], embed: Embedder, settings: DedupSettings, earlier: ReleasedIndex | None = None
) -> DedupResult:
    """Keep the first of every group of duplicates among ``texts`` (in order), and drop any text
    that duplicates a row of ``earlier`` (the index of earlier releases, extended in place)."""
    dedup = Deduplicator(embed, settings, earlier)
    keep = np.zeros(len(texts), dtype=bool)
    duplicates: list[Duplicate] = []
    embeddings = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float16)
    kept_ids: list[str] = []
    kept_exact: list[str] = []
    kept_signatures: list[np.ndarray] = []
    kept_embeddings: list[np.ndarray] = []
    for part in _batches(len(texts), settings.batch_size):
        batch_ids = list(ids[part])
        result = dedup.batch(batch_ids, list(texts[part]))
        keep[part] = result.keep
        duplicates += [Duplicate(part.start + d.row, d.method, d.counterpart, d.similarity, d.release) for d in result.duplicates]
        rows = np.nonzero(result.keep)[0]
        embeddings[part.start + rows] = result.embeddings
        kept_ids += [batch_ids[r] for r in rows]
        kept_exact += result.exact
        kept_signatures.append(result.signatures)
        kept_embeddings.append(result.embeddings)
    table = index_table(
        kept_ids,
        kept_exact,
        np.concatenate(kept_signatures) if kept_signatures else np.zeros((0, NUM_PERM), np.uint32),
        np.concatenate(kept_embeddings) if kept_embeddings else np.zeros((0, EMBEDDING_DIM), np.float16),
    )
    counts = {"kept": int(keep.sum()), **{m: sum(1 for d in duplicates if d.method == m) for m in ("exact", "near", "semantic")}}
    return DedupResult(keep, duplicates, embeddings, table, counts)
