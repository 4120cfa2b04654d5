"""Best-fit packing: no token lost or duplicated, right boundaries, efficiency, chunking, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from mixing.packing import Packer, best_fit_decreasing


def _docs(n, max_len, seed=0):
    rng = np.random.default_rng(seed)
    # document i is tokens (i, i, ...) so every token names its document
    return [np.full(int(k), i, dtype=np.uint32) for i, k in enumerate(rng.integers(1, max_len, size=n))]


def _pack(docs, length, window=8, seed=0):
    packer = Packer(length, window_sequences=window, seed=seed)
    out = [s for d in docs for s in packer.add(d)]
    out += list(packer.flush())
    return out, packer.stats


def test_best_fit_picks_the_fullest_bin_that_fits():
    # 6 -> bin0 (room 4); 5 -> bin1 (room 5); 4 -> bin0 (exact fit, not bin1); 3 -> bin1
    assert best_fit_decreasing(np.array([5, 3, 6, 4]), 10) == [[2, 3], [0, 1]]
    with pytest.raises(ValueError):
        best_fit_decreasing(np.array([11]), 10)


def test_no_token_lost_or_duplicated_and_boundaries_right():
    docs = _docs(500, 90)
    seqs, stats = _pack(docs, 64)
    pieces = {}
    for s in seqs:
        assert s.tokens.dtype == np.uint32 and s.cu_seqlens[0] == 0 and s.cu_seqlens[-1] == len(s.tokens) <= 64
        for a, b in zip(s.cu_seqlens[:-1], s.cu_seqlens[1:]):
            piece = s.tokens[a:b]
            assert len(set(piece.tolist())) == 1  # a boundary never falls inside a piece, nor joins two docs
            pieces.setdefault(int(piece[0]), []).append(len(piece))
    assert {k: sum(v) for k, v in pieces.items()} == {i: len(d) for i, d in enumerate(docs)}
    long_docs = [i for i, d in enumerate(docs) if len(d) > 64]
    assert stats.split_documents == len(long_docs) > 0
    for i in long_docs:  # chunked into full sequences plus one remainder
        assert sorted(pieces[i], reverse=True) == [64] * (len(docs[i]) // 64) + ([len(docs[i]) % 64] if len(docs[i]) % 64 else [])
    for i, d in enumerate(docs):
        if len(d) <= 64:
            assert pieces[i] == [len(d)]


def test_efficiency_and_counts():
    docs = _docs(2000, 40, seed=1)
    seqs, stats = _pack(docs, 128, window=16)
    total = sum(len(d) for d in docs)
    assert stats.tokens == total and stats.sequences == len(seqs) and stats.documents == 2000
    assert stats.efficiency == pytest.approx(total / (128 * len(seqs)))
    assert stats.efficiency > 0.995  # many small documents fill the gaps
    assert stats.split_documents == 0 < stats.concat_split_documents


def test_deterministic_and_seeded_order():
    docs = _docs(300, 50, seed=2)
    a, _ = _pack(docs, 64)
    b, _ = _pack(docs, 64)
    c, _ = _pack(docs, 64, seed=1)
    assert [s.tokens.tolist() for s in a] == [s.tokens.tolist() for s in b]
    assert [s.tokens.tolist() for s in a] != [s.tokens.tolist() for s in c]


def test_copies_of_a_document_never_share_a_sequence():
    """An upsampled bucket gives equal-length copies, which best-fit would otherwise put side by side."""
    base = _docs(300, 30, seed=3)
    docs = [d for d in base for _ in range(3)]  # every document three times, copies adjacent
    packer = Packer(128, window_sequences=64, seed=0)
    seqs = [s for d in docs for s in packer.add(d, group=int(d[0]))] + packer.flush()
    for s in seqs:
        names = [int(s.tokens[a]) for a in s.cu_seqlens[:-1]]
        assert len(names) == len(set(names))
    assert packer.stats.tokens == sum(len(d) for d in docs) and packer.stats.efficiency > 0.99
    unconstrained, _ = _pack(docs, 128, window=64)
    assert any(len({int(s.tokens[a]) for a in s.cu_seqlens[:-1]}) < len(s.cu_seqlens) - 1 for s in unconstrained)


def test_best_fit_keeps_groups_apart():
    # without groups the two 5s would share bin 0; with them the second 5 opens a bin
    assert best_fit_decreasing(np.array([5, 5]), 10) == [[0, 1]]
    assert best_fit_decreasing(np.array([5, 5]), 10, groups=["a", "a"]) == [[0], [1]]
    assert best_fit_decreasing(np.array([5, 5, 4]), 10, groups=["a", "a", None]) == [[0, 2], [1]]


def test_copies_are_placed_before_free_items_so_they_need_no_extra_bin():
    # longest first would pair the two 5s and leave the two copies of "a" a bin each (3 bins)
    assert best_fit_decreasing(np.array([5, 4, 4, 5]), 10, groups=[None, "a", "a", None]) == [[1, 0], [2, 3]]


@pytest.mark.parametrize("doc", [[-1, 3], [2**33 + 5, 2], [1.5, 2.0]])
def test_token_ids_that_do_not_fit_uint32_are_refused_not_wrapped(doc):
    with pytest.raises(ValueError, match="out of range|must be integers"):
        Packer(8).add(np.array(doc))
