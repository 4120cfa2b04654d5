"""Deterministic document selection: which documents, how many times, in what order.

Every decision is a function of (seed, document id, tie), never of arrival order or worker count:

* `doc_hash(seed, id)` is xxh64 of the id seeded with the seed; epoch e of a document draws
  `epoch_hash(h, e)` and its place in the output `order_key(h, e)` (splitmix64 of h and e).
* Ids may repeat (across sources, even within a bucket), so documents are told apart by
  (epoch hash, tie): `tie` is unique per cleaned row (`mixing.tokenize`), and what a bucket takes and
  counts is a set of such keys, matched within that bucket only.
* A bucket planned at rate r (tokens / available tokens, at most max_epochs) takes every document
  floor(r) times; for the fractional epoch it takes, in (epoch hash, tie) order, the prefix of documents that
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
_NO_CUTOFF = (-1, -1)  # fractional epoch takes nothing
_LAST_TIE = 2**64 - 1  # a cutoff at the end of a bin takes every tie
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
    cutoff: tuple[int, int]  # fractional epoch takes (epoch hash, tie) <= cutoff; _NO_CUTOFF for none ...
    extra: tuple[tuple[int, int], ...]  # ... plus these (epoch hash, tie): beyond the cutoff, still fit
    tokens: int  # realized tokens (EOS included)
    documents: int  # documents taken, counting repeats
    selected_documents: int  # documents taken at least once
    available_documents: int  # documents in the bucket


# The fractional epoch is located with a histogram of epoch hashes (their top HIST_BITS bits), so
# the planner holds O(bins) numbers per bucket, and documents one by one only where the cut falls.
HIST_BITS = 12
BINS = 1 << HIST_BITS
_SHIFT = np.uint64(64 - HIST_BITS)


def hash_bins(eh: np.ndarray) -> np.ndarray:
    return (eh >> _SHIFT).astype(np.int64)


def histogram(eh: np.ndarray, n_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(documents, tokens) per hash bin."""
    bins = hash_bins(eh)
    return (np.bincount(bins, minlength=BINS).astype(np.int64),
            np.bincount(bins, weights=n_tokens, minlength=BINS).round().astype(np.int64))


@dataclass(frozen=True)
class FractionWindow:
    """Bins [0, first) fit the fractional epoch whole (base_docs, base_tokens); the cut and the
    documents scanned after it lie in bins [first, last], the only ones looked at document by document."""

    first: int
    last: int
    base_docs: int
    base_tokens: int

    def contains(self, eh: np.ndarray) -> np.ndarray:
        bins = hash_bins(eh)
        return (bins >= self.first) & (bins <= self.last)


def fraction_window(remainder: float, docs: np.ndarray, tokens: np.ndarray) -> FractionWindow:
    cum_tokens, cum_docs = np.cumsum(tokens), np.cumsum(docs)
    first = min(int(np.searchsorted(cum_tokens, remainder, side="right")), BINS - 1)
    base_docs = int(cum_docs[first - 1]) if first else 0
    base_tokens = int(cum_tokens[first - 1]) if first else 0
    needed = base_docs + int(docs[first]) + _SCAN  # the cut lies in bin `first`; the scan goes _SCAN past it
    last = min(int(np.searchsorted(cum_docs, needed, side="left")), BINS - 1)
    return FractionWindow(first, last, base_docs, base_tokens)


def _units(eh: np.ndarray, tie: np.ndarray, n_tokens: np.ndarray) -> tuple[np.ndarray, ...]:
    """(eh, tie, tokens, documents) in (epoch hash, tie) order, equal keys merged into one unit.

    `copies` cannot tell rows with equal keys apart (same id and tie: hand-made input without
    source/position and with the same text), so they are taken, and counted, together.
    """
    order = np.lexsort((tie, eh))
    eh, tie, n_tokens = eh[order], tie[order], n_tokens[order]
    new = np.ones(eh.size, dtype=bool)
    new[1:] = (eh[1:] != eh[:-1]) | (tie[1:] != tie[:-1])
    start = np.flatnonzero(new)
    return eh[start], tie[start], np.add.reduceat(n_tokens, start), np.diff(np.append(start, eh.size))


def selection_from_window(full: int, available: int, documents: int, remainder: float, window: FractionWindow,
                          eh: np.ndarray, tie: np.ndarray, n_tokens: np.ndarray) -> BucketSelection:
    """Finish a bucket's selection from the documents of its window: (epoch hash, tie, tokens) of each."""
    eh, tie, sizes, counts = _units(eh, tie, n_tokens)
    cum = window.base_tokens + np.cumsum(sizes)
    k = int(np.searchsorted(cum, remainder, side="right"))  # the prefix that fits: cum[k-1] <= remainder
    if k:
        cutoff, part_tokens, part_docs = (int(eh[k - 1]), int(tie[k - 1])), int(cum[k - 1]), \
            window.base_docs + int(counts[:k].sum())
    elif window.base_docs:  # the whole bins before the window fit, nothing inside it does
        cutoff, part_tokens, part_docs = ((window.first << int(_SHIFT)) - 1, _LAST_TIE), window.base_tokens, \
            window.base_docs
    else:
        cutoff, part_tokens, part_docs = _NO_CUTOFF, 0, 0
    extra, left, skipped = [], remainder - part_tokens, []
    for i, size in enumerate(sizes[k:k + _SCAN].tolist(), start=k):
        if left < 0.5:
            break
        if size <= left:
            extra.append(i)
            left -= size
            part_tokens += size
        else:
            skipped.append((i, size))
    # one overshooting document is still worth taking if it lands closer to the plan
    overshoot = next(((i, size) for i, size in skipped if size < 2 * left), None) if left >= 0.5 else None
    if overshoot is not None:
        extra.append(overshoot[0])
        part_tokens += overshoot[1]
    fraction_docs = part_docs + int(counts[extra].sum())
    return BucketSelection(full, cutoff, tuple((int(eh[i]), int(tie[i])) for i in extra),
                           full * available + part_tokens, full * documents + fraction_docs,
                           documents if full else fraction_docs, documents)


def split_rate(planned_tokens: float, available: int) -> tuple[int, float]:
    """(full epochs, tokens left for the fractional epoch) of a bucket planned at `planned_tokens`."""
    rate = planned_tokens / available if available else 0.0
    full = int(math.floor(rate + 1e-12))
    return full, planned_tokens - full * available


def whole_epochs(full: int, available: int, documents: int) -> BucketSelection:
    """A bucket taken `full` times over, with no fractional epoch."""
    return BucketSelection(full, _NO_CUTOFF, (), full * available, full * documents, documents if full else 0,
                           documents)


def plan_selection(planned_tokens: float, h: np.ndarray, tie: np.ndarray, n_tokens: np.ndarray) -> BucketSelection:
    """Choose full epochs and the fractional epoch's documents for one bucket held in memory.

    The same steps as the distributed planner (`mixing.job`), which builds the histogram and
    gathers the window's documents on Ray workers: both give the same selection.
    """
    available = int(n_tokens.sum())
    full, remainder = split_rate(planned_tokens, available)
    if remainder <= 0 or not h.size:
        return whole_epochs(full, available, h.size)
    eh = epoch_hash(h, full)
    window = fraction_window(remainder, *histogram(eh, n_tokens))
    inside = window.contains(eh)
    return selection_from_window(full, available, h.size, remainder, window, eh[inside], tie[inside], n_tokens[inside])


def _in_extra(eh: np.ndarray, tie: np.ndarray, selection: list[BucketSelection], bucket: np.ndarray) -> np.ndarray:
    """Whether each document is one of its own bucket's extra picks (a key another bucket picked is not)."""
    taken = np.zeros(eh.size, dtype=bool)
    for i, s in enumerate(selection):
        if s.extra:
            rows, picks = np.flatnonzero(bucket == i), set(s.extra)
            taken[rows] = [key in picks for key in zip(eh[rows].tolist(), tie[rows].tolist())]
    return taken


def copies(h: np.ndarray, tie: np.ndarray, selection: list[BucketSelection],
           bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand documents into their selected copies: (row index, epoch) for every copy taken.

    `bucket[i]` indexes `selection` (-1: excluded document).
    """
    full = np.array([s.full_epochs for s in selection] + [0], dtype=np.int64)[bucket]
    has_cut = np.array([s.cutoff != _NO_CUTOFF for s in selection] + [False])[bucket]
    cut_eh, cut_tie = (np.array([max(s.cutoff[j], 0) for s in selection] + [0], dtype=np.uint64)[bucket]
                       for j in (0, 1))
    eh = epoch_hash(h, full)
    under = (eh < cut_eh) | ((eh == cut_eh) & (tie <= cut_tie))
    partial = (bucket >= 0) & ((has_cut & under) | _in_extra(eh, tie, selection, bucket))
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
    rows, epochs = copies(h, batch.column("tie").to_numpy(), [selections[n] for n in names], bucket)
    key = order_key(h[rows], epochs).view(np.int64)
    take = pa.array(rows)
    return pa.table({"key": key, "content": batch.column("content").take(take),
                     "tokens": batch.column("tokens").take(take)})
