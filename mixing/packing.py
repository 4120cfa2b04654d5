"""Best-fit packing of tokenized documents into fixed-length sequences (Ding et al. 2024).

"Fewer Truncations Improve Language Modeling": documents longer than a sequence are cut into
full-length chunks plus a remainder; then all pieces, longest first, go into the fullest sequence that
still has room (best-fit decreasing). Only documents longer than a sequence are ever split, unlike
concatenate-and-chunk, which splits nearly every document that crosses a boundary.

Memory stays bounded by packing a window of documents at a time: `Packer` emits the sequences of a
window and carries the pieces of its least-filled sequences (at most a quarter of a window) over to the
next window, where smaller documents can still fill them; only the final flush pads them.

Copies of one document (a bucket sampled for more than one epoch) never share a sequence: copies have
equal lengths, so best-fit decreasing would otherwise place them side by side (in the demo mix, 55 of
82 sequences held one document two or more times), and a model sees a text repeated within its
context, which teaches copying rather than the text. Placing the most-copied pieces first keeps that
rule from costing sequences: on the shared-corpus mix it packs into the 924 sequences its tokens need.
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mixing.shards import check_token_ids

_SHIFT = 32  # bins are kept sorted by (remaining room << 32 | bin number)
_BIN_MASK = (1 << _SHIFT) - 1


def best_fit_decreasing(lengths: np.ndarray, capacity: int, groups: Optional[Sequence] = None) -> list[list[int]]:
    """Assign items (all <= capacity) to bins; returns, per bin, the item indices in placement order.

    With `groups`, items of one group never share a bin: an item goes to the fullest bin that has room
    and holds none of its group (an item whose group is None goes anywhere). Items of the largest
    groups are then placed first, each size class longest first: copies need as many bins as they
    are, so they go while every bin still has room, and items free to go anywhere fill the last gaps.
    Longest-first alone leaves the smallest copies for last, when only the few bins opened at the end
    have room, and each copy of them opens one more. Ties go to the lowest-numbered bin, and equal
    keys keep input order, so the result is a pure function of `lengths` and `groups`.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"item lengths must be in [1, {capacity}]")
    if groups is None:
        order = np.argsort(-lengths, kind="stable")
    else:
        sizes = Counter(g for g in groups if g is not None)
        copies = np.fromiter((sizes[g] if g is not None else 1 for g in groups), dtype=np.int64,
                             count=lengths.size)
        order = np.lexsort((-lengths, -copies))
    bins: list[list[int]] = []
    members: list[set] = []  # groups in each bin
    open_keys: list[int] = []  # sorted keys of bins with room left
    for item in order.tolist():
        need = int(lengths[item])
        group = None if groups is None else groups[item]
        pos = bisect.bisect_left(open_keys, need << _SHIFT)
        # Skipped bins hold a copy of this item: as many as its group has copies placed, so few.
        while group is not None and pos < len(open_keys) and group in members[open_keys[pos] & _BIN_MASK]:
            pos += 1
        if pos < len(open_keys):
            key = open_keys.pop(pos)
            room, b = key >> _SHIFT, key & _BIN_MASK
        else:
            room, b = capacity, len(bins)
            bins.append([])
            members.append(set())
        bins[b].append(item)
        if group is not None:
            members[b].add(group)
        room -= need
        if room > 0:
            bisect.insort(open_keys, (room << _SHIFT) | b)
    return bins


@dataclass
class PackStats:
    documents: int = 0
    split_documents: int = 0
    sequences: int = 0
    tokens: int = 0
    capacity: int = 0  # sequences * sequence_length
    concat_split_documents: int = 0  # what plain concatenate-and-chunk would have split, for comparison
    _stream_tokens: int = 0

    @property
    def efficiency(self) -> float:
        return self.tokens / self.capacity if self.capacity else 0.0

    def to_dict(self) -> dict:
        return {"documents": self.documents, "split_documents": self.split_documents,
                "concat_split_documents": self.concat_split_documents, "sequences": self.sequences,
                "tokens": self.tokens, "efficiency": self.efficiency}


@dataclass
class PackedSequence:
    tokens: np.ndarray  # uint32, length <= sequence_length
    cu_seqlens: np.ndarray  # int32, from 0 to len(tokens)


@dataclass
class Packer:
    """Streams documents in, packed sequences out; same input order -> same sequences.

    `window_sequences` bounds memory: about that many sequences' worth of tokens is held at once.
    Emitted sequences of a window are shuffled with `seed` so that long and short documents (which
    best-fit sorts apart) are spread over the output.
    """

    sequence_length: int
    window_sequences: int = 1024
    seed: int = 0
    stats: PackStats = field(default_factory=PackStats)

    def __post_init__(self):
        if self.sequence_length < 1 or self.window_sequences < 1:
            raise ValueError("sequence_length and window_sequences must be >= 1")
        self._pieces: list[np.ndarray] = []
        self._groups: list = []  # the document each piece comes from (None: unknown)
        self._tokens = 0
        self._window = 0

    def add(self, doc: np.ndarray, group=None) -> list[PackedSequence]:
        """Add one document (token ids, EOS included); returns the sequences of a window once it is full.

        `group`: what names the document (mixing passes a hash of its text), so that its copies and
        pieces land in different sequences; None puts no constraint on it."""
        doc = np.asarray(doc)
        if doc.dtype != np.uint32:  # a cast alone would wrap -1 or 2**33 + 5 into a valid-looking id
            doc = check_token_ids(doc)
        if doc.size == 0:
            return []
        stats, length = self.stats, self.sequence_length
        stats.documents += 1
        stats.split_documents += doc.size > length
        start, end = stats._stream_tokens, stats._stream_tokens + doc.size
        stats.concat_split_documents += start // length != (end - 1) // length
        stats._stream_tokens = end
        for start in range(0, doc.size, self.sequence_length):
            self._pieces.append(doc[start:start + self.sequence_length])
            self._groups.append(group)
        self._tokens += doc.size
        if self._tokens >= self.window_sequences * self.sequence_length:
            return self._pack(final=False)
        return []

    def flush(self) -> list[PackedSequence]:
        """Pack whatever is left, padding the last sequences."""
        return self._pack(final=True)

    def _pack(self, final: bool) -> list[PackedSequence]:
        lengths = np.fromiter((p.size for p in self._pieces), dtype=np.int64, count=len(self._pieces))
        bins = best_fit_decreasing(lengths, self.sequence_length, self._groups)
        fill = np.array([int(lengths[b].sum()) for b in bins], dtype=np.int64)
        keep: set[int] = set()
        if not final:  # carry the emptiest bins' pieces over, up to a quarter of a window
            budget = self.window_sequences * self.sequence_length // 4
            for b in np.argsort(fill, kind="stable").tolist():
                if fill[b] == self.sequence_length or fill[b] > budget:
                    break
                keep.add(b)
                budget -= int(fill[b])
        emit = [b for b in range(len(bins)) if b not in keep]
        rng = np.random.default_rng([self.seed, self._window])
        self._window += 1
        out = []
        for b in rng.permutation(len(emit)).tolist():
            pieces = [self._pieces[i] for i in bins[emit[b]]]
            cu = np.zeros(len(pieces) + 1, dtype=np.int32)
            np.cumsum([p.size for p in pieces], out=cu[1:])
            out.append(PackedSequence(np.concatenate(pieces), cu))
            self.stats.sequences += 1
            self.stats.tokens += int(cu[-1])
            self.stats.capacity += self.sequence_length
        carried = [i for b in sorted(keep) for i in bins[b]]
        self._pieces, self._groups = [self._pieces[i] for i in carried], [self._groups[i] for i in carried]
        self._tokens = sum(p.size for p in self._pieces)
        return out

