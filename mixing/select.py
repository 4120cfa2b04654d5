"""Deterministic document selection: which documents, how many times, in what order.

Every decision is a function of (seed, document id), never of arrival order or worker count:

* `doc_hash(seed, id)` is xxh64 of the id seeded with the seed; epoch e of a document draws
  `epoch_hash(h, e)` and its place in the output `order_key(h, e)` (splitmix64 of h and e).
* A bucket planned at rate r (tokens / available tokens, at most max_epochs) takes every document
  floor(r) times; for the fractional epoch it takes, in epoch-hash order, the prefix of documents that
  fits the remaining tokens, then each further document that still fits (skipping those too long for
  what is left), and finally one overshooting document if that lands closer to the plan. Compared with a coin flip per document, this lands
  within about one short document of the plan even for small buckets of long documents.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import xxhash

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NO_CUTOFF = -1  # fractional epoch takes nothing
_SCAN = 10_000  # documents looked at beyond the prefix to fill the rest of a bucket


def doc_hash(ids, seed: int) -> np.ndarray:
    """uint64 hash of each document id under `seed`."""
    seed = int(seed) % 2**64
    return np.fromiter((xxhash.xxh64_intdigest(str(i).encode("utf-8"), seed) for i in ids),
                       dtype=np.uint64, count=len(ids))


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _stream(h: np.ndarray, epoch, salt: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _splitmix(h + (np.asarray(epoch, dtype=np.uint64) * np.uint64(2) + np.uint64(salt)) * _GOLDEN)


def epoch_hash(h: np.ndarray, epoch) -> np.ndarray:
    return _stream(h, epoch, 1)


def order_key(h: np.ndarray, epoch) -> np.ndarray:
    return _stream(h, epoch, 2)


@dataclass(frozen=True)
class BucketSelection:
    full_epochs: int
    cutoff: int  # fractional epoch takes documents with epoch_hash <= cutoff; _NO_CUTOFF for none ...
    extra: tuple[int, ...]  # ... plus these epoch hashes (documents beyond the cutoff that still fit)
    tokens: int  # realized tokens (EOS included)
    documents: int  # documents taken, counting repeats


def plan_selection(planned_tokens: float, h: np.ndarray, n_tokens: np.ndarray) -> BucketSelection:
    """Choose full epochs and the fractional epoch's documents for one bucket."""
    available = int(n_tokens.sum())
    rate = planned_tokens / available if available else 0.0
    full = int(math.floor(rate + 1e-12))
    remainder = planned_tokens - full * available
    cutoff, extra, part_tokens, part_docs = _NO_CUTOFF, [], 0, 0
    if remainder > 0 and h.size:
        eh = epoch_hash(h, full)
        order = np.argsort(eh, kind="stable")
        sizes = n_tokens[order]
        cum = np.cumsum(sizes)
        k = int(np.searchsorted(cum, remainder, side="right"))  # the prefix that fits: cum[k-1] <= remainder
        if k:
            cutoff, part_tokens, part_docs = int(eh[order[k - 1]]), int(cum[k - 1]), k
        left, skipped = remainder - part_tokens, []
        for i, size in enumerate(sizes[k:k + _SCAN].tolist(), start=k):
            if left < 0.5:
                break
            if size <= left:
                extra.append(int(eh[order[i]]))
                left -= size
                part_tokens += size
            else:
                skipped.append((i, size))
        # one overshooting document is still worth taking if it lands closer to the plan
        overshoot = next(((i, size) for i, size in skipped if size < 2 * left), None) if left >= 0.5 else None
        if overshoot is not None:
            extra.append(int(eh[order[overshoot[0]]]))
            part_tokens += overshoot[1]
        part_docs += len(extra)
    return BucketSelection(full, cutoff, tuple(extra), full * available + part_tokens, full * h.size + part_docs)


def copies(h: np.ndarray, selection: list[BucketSelection], bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand documents into their selected copies: (row index, epoch) for every copy taken.

    `bucket[i]` indexes `selection` (-1: excluded document).
    """
    full = np.array([s.full_epochs for s in selection] + [0], dtype=np.int64)[bucket]
    has_cut = np.array([s.cutoff != _NO_CUTOFF for s in selection] + [False])[bucket]
    cut = np.array([max(s.cutoff, 0) for s in selection] + [0], dtype=np.uint64)[bucket]
    extra = np.array([e for s in selection for e in s.extra], dtype=np.uint64)
    eh = epoch_hash(h, full)
    partial = (bucket >= 0) & ((has_cut & (eh <= cut)) | np.isin(eh, extra))
    full_rows = np.repeat(np.arange(h.size), full)
    full_epochs = np.arange(full_rows.size) - np.repeat(np.cumsum(full) - full, full)
    return (np.concatenate([full_rows, np.flatnonzero(partial)]),
            np.concatenate([full_epochs, full[partial]]))


def expand_batch(batch: pa.Table, selections: dict[tuple[str, str], BucketSelection]) -> pa.Table:
    """Tokenized documents -> one row per selected copy: (key, content, tokens); sort by both for the order."""
    names = list(selections)
    index = {name: i for i, name in enumerate(names)}
    cats, keys = batch.column("category").to_pylist(), batch.column("key").to_pylist()
    bucket = np.array([index.get((c, k), -1) for c, k in zip(cats, keys)], dtype=np.int64)
    h = batch.column("h").to_numpy()
    rows, epochs = copies(h, [selections[n] for n in names], bucket)
    key = order_key(h[rows], epochs).view(np.int64)
    take = pa.array(rows)
    return pa.table({"key": key, "content": batch.column("content").take(take),
                     "tokens": batch.column("tokens").take(take)})
