"""MinHash signatures, vectorized over every character, shingle and permutation of a batch of documents.

`MinHasher.signatures` equals datasketch's ``MinHash(num_perm, seed, hashfunc=hash_shingle)``
updated with the same shingles (``MinHasher.shingles``), bit for bit, for both of datasketch's
32-bit permutation schemes. The default is datasketch 2.x's default ``affine32`` (a murmur3 pre-mix,
then ``a*h + b mod 2**32``: a bijection, so no collision bias on large sets, and four times less
arithmetic than the 64-bit ``legacy`` ``(a*h + b) % (2**61 - 1) & (2**32 - 1)``, also offered).

Shingles: n-grams of lower-cased words (runs of letters, digits, underscores and combining marks; so
Devanagari or Thai vowel signs do not split words) for spaced scripts; character n-grams of those word
characters for unspaced scripts (zh, ja, th, ... by `lang`, else when over 30% of the word characters
are Han, kana, Thai, Lao, Tibetan, Myanmar or Khmer). A document shorter than n tokens is one shingle
of all its tokens (an empty document: the empty shingle).

Hashes are built for numpy, not for one Python call per token: a token is a polynomial over its code
points (mod 2**64) through murmur3's fmix64; a shingle combines its token values with fixed odd
multipliers, then fmix64, top 32 bits. So a whole batch is one UTF-32 buffer and a few array passes;
`hash_shingle` is the same function for one shingle (and a valid datasketch ``hashfunc``).
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Optional

import numpy as np

SCHEMES = ("affine32", "legacy")
# Languages written without spaces between words (codes as the XVERSE table spells them, plus
# other unspaced scripts fastText can label).
UNSPACED_LANGS = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "dz"})
# Thai, Lao, Tibetan, Myanmar, Khmer, kana, Han (BMP, compatibility, supplementary planes).
_UNSPACED_RANGES = ((0x0E00, 0x0EFF), (0x0F00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF),
                    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF))
_UNSPACED_SHARE = 0.3  # of the word characters
_TOKEN_BASE = 0x100000001B3  # odd, so the polynomial is a bijection per position
_UNICODE = 0x110000

_MASK64 = (1 << 64) - 1
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_SIGNATURE_BUDGET = 1 << 20  # permuted values held at once (4 MiB in affine32)
_CHUNK_CHARS = 1 << 16  # characters tokenized at once: 2x faster than 1 << 17 here (cache-sized arrays)


@functools.lru_cache(maxsize=None)
def _multipliers(count: int) -> tuple[int, ...]:
    """Fixed odd 64-bit multipliers (splitmix64 sequence): position j of a shingle weighs M[j]."""
    out, x = [], 0
    for _ in range(count):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append((z ^ (z >> 31)) | 1)
    return tuple(out)


def _fmix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def _fmix32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def mix_rows(values: np.ndarray) -> np.ndarray:
    """One 64-bit hash per row of a (n, k) uint64 matrix: sum of value * M[j] (mod 2**64), + k*M[k],
    finalized by murmur3's fmix64. Order-sensitive and stable across machines and runs."""
    n, k = values.shape
    mult = np.array(_multipliers(k + 1), dtype=np.uint64)
    with np.errstate(over="ignore"):
        acc = np.full(n, mult[k] * np.uint64(k), dtype=np.uint64)
        for j in range(k):
            acc += values[:, j] * mult[j]
    return _fmix64(acc)


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray, re.Pattern, re.Pattern]:
    """Per code point: word character?, unspaced-script word character?; and the same two sets as
    regexes (word runs, unspaced characters) for the one-document reference path. Built once per process."""
    word = np.fromiter((c.isalnum() or unicodedata.category(c)[0] == "M" for c in map(chr, range(_UNICODE))),
                       dtype=bool, count=_UNICODE)
    word[ord("_")] = True
    unspaced = np.zeros(_UNICODE, dtype=bool)
    for lo, hi in _UNSPACED_RANGES:
        unspaced[lo:hi + 1] = True
    unspaced &= word
    return word, unspaced, re.compile(f"{_char_class(word)}+"), re.compile(_char_class(unspaced))


def _char_class(table: np.ndarray) -> str:
    edges = np.flatnonzero(np.diff(np.r_[0, table.astype(np.int8), 0]))
    return "[" + "".join(f"\\U{lo:08x}-\\U{hi - 1:08x}" for lo, hi in zip(edges[::2], edges[1::2])) + "]"


def has_words(texts: Sequence[str]) -> np.ndarray:
    """Which documents hold a word character. One without (empty, only emoji or punctuation) has just
    the empty shingle, which every such document shares, so its signature says nothing about it."""
    word_run = _tables()[2]
    return np.fromiter((word_run.search(text) is not None for text in texts), dtype=bool, count=len(texts))


def token_value(token: str) -> int:
    """The 64-bit value of one token: fmix64 of the polynomial sum of code point * BASE**position."""
    acc, power = 0, 1
    for ch in token:
        acc = (acc + ord(ch) * power) & _MASK64
        power = (power * _TOKEN_BASE) & _MASK64
    return int(_fmix64(np.array([acc], dtype=np.uint64))[0])


def hash_shingle(tokens: Sequence[str]) -> int:
    """The 32-bit hash of one shingle (a tuple of tokens): the scalar twin of the vectorized hash,
    usable as datasketch's ``hashfunc`` to build or query datasketch sketches compatible with ours."""
    k = len(tokens)
    mult = _multipliers(k + 1)
    acc = (k * mult[k]) & _MASK64
    for j, tok in enumerate(tokens):
        acc = (acc + token_value(tok) * mult[j]) & _MASK64
    return int(_fmix64(np.array([acc], dtype=np.uint64))[0] >> np.uint64(32))


def is_unspaced(text: str, lang: Optional[str] = None) -> bool:
    """Whether `text` gets character shingles: by language code when known, else by script."""
    if lang is not None and lang != "other":
        return lang in UNSPACED_LANGS
    if text.isascii():
        return False
    _, _, word_re, unspaced_re = _tables()
    chars = "".join(word_re.findall(text.lower()))
    return len(unspaced_re.findall(chars)) > _UNSPACED_SHARE * len(chars) > 0


class MinHasher:
    """Seeded MinHash over word (or character) n-gram shingles; every worker with the same
    parameters computes the same signatures."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1, char_ngram: int = 5,
                 scheme: str = "affine32"):
        if num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {num_perm}")
        if ngram < 1 or char_ngram < 1:
            raise ValueError(f"ngram and char_ngram must be >= 1, got {ngram} and {char_ngram}")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        self.num_perm, self.ngram, self.char_ngram, self.seed, self.scheme = (
            num_perm, ngram, char_ngram, seed, scheme)
        self._a, self._b = self._permutations()

    def _permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """The (a, b) parameters datasketch draws for `scheme` from RandomState(seed), same order."""
        gen = np.random.RandomState(self.seed)
        if self.scheme == "legacy":
            ab = np.array([(gen.randint(1, _MERSENNE, dtype=np.uint64), gen.randint(0, _MERSENNE, dtype=np.uint64))
                           for _ in range(self.num_perm)], dtype=np.uint64)
            return ab[:, 0].copy(), ab[:, 1].copy()
        a = gen.randint(0, 1 << 31, self.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, self.num_perm, dtype=np.uint32)
        return a, b

    # ------------------------------------------------------------------ shingles

    def tokens(self, text: str, lang: Optional[str] = None) -> tuple[list[str], int]:
        """The tokens of a document and the shingle width that applies to them."""
        words = _tables()[2].findall(text.lower())
        if is_unspaced(text, lang):
            return list("".join(words)), self.char_ngram
        return words, self.ngram

    def shingles(self, text: str, lang: Optional[str] = None) -> Iterator[tuple[str, ...]]:
        """The shingles of one document, as token tuples (the reference the signatures follow)."""
        toks, n = self.tokens(text, lang)
        if len(toks) < n:
            yield tuple(toks)
            return
        for i in range(len(toks) - n + 1):
            yield tuple(toks[i:i + n])

    def shingle_hashes(self, texts: Sequence[str], langs: Optional[Sequence[Optional[str]]] = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every shingle of every document, concatenated, and the number per document."""
        if langs is None:
            langs = [None] * len(texts)
        elif len(langs) != len(texts):
            raise ValueError(f"got {len(langs)} langs for {len(texts)} texts")
        tok, length, unspaced = _batch_tokens(texts, langs)
        width = np.where(unspaced, self.char_ngram, self.ngram)
        width = np.minimum(width, length)  # short documents: one shingle
        counts = np.maximum(length - width + 1, 1)
        doc = np.repeat(np.arange(len(texts)), counts)
        first_shingle = np.cumsum(counts) - counts
        first_token = np.cumsum(length) - length
        start = first_token[doc] + (np.arange(doc.size) - first_shingle[doc])
        k = width[doc]
        mult = np.array(_multipliers(int(width.max(initial=0)) + 1), dtype=np.uint64)
        acc = np.empty(doc.size, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for kv in np.unique(width):  # the n-gram widths, and the lengths of documents shorter than them
                sel = np.flatnonzero(k == kv)
                part = np.full(sel.size, mult[kv] * np.uint64(kv), dtype=np.uint64)
                for j in range(kv):
                    part += tok[start[sel] + j] * mult[j]
                acc[sel] = part
        return (_fmix64(acc) >> np.uint64(32)).astype(np.uint32), counts

    # ------------------------------------------------------------------ signatures

    def signatures(self, texts: Sequence[str], langs: Optional[Sequence[Optional[str]]] = None) -> np.ndarray:
        """(len(texts), num_perm) uint64 MinHash signatures (values < 2**32)."""
        if langs is not None and len(langs) != len(texts):
            raise ValueError(f"got {len(langs)} langs for {len(texts)} texts")
        out = np.full((len(texts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint64)
        lo = 0
        while lo < len(texts):  # chunks of about _CHUNK_CHARS characters keep the arrays in cache
            hi, chars = lo, 0
            while hi < len(texts) and (hi == lo or chars < _CHUNK_CHARS):
                chars += len(texts[hi]) if isinstance(texts[hi], str) else 0
                hi += 1
            out[lo:hi] = self._signature_chunk(texts[lo:hi], None if langs is None else langs[lo:hi])
            lo = hi
        return out

    def _signature_chunk(self, texts: Sequence[str], langs: Optional[Sequence[Optional[str]]]) -> np.ndarray:
        return self.signatures_from_hashes(*self.shingle_hashes(texts, langs))

    def signatures_from_hashes(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Signatures from 32-bit shingle hashes (concatenated; `counts[i]` >= 1 of them for document i),
        e.g. from `shingle_hashes` or your own shingling."""
        if (counts < 1).any() or counts.sum() != hashes.size:
            raise ValueError("counts must be >= 1 per document and sum to the number of hashes")
        out = np.full((len(counts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint64)
        doc = np.repeat(np.arange(len(counts)), counts)
        hashes = hashes.astype(np.uint32, copy=False)
        if self.scheme == "affine32":
            hashes = _fmix32(hashes)
        step = max(1, _SIGNATURE_BUDGET // self.num_perm)
        for lo in range(0, hashes.size, step):
            hi = min(lo + step, hashes.size)
            permuted = self._permute(hashes[lo:hi])  # (num_perm, shingles): contiguous, SIMD-friendly
            seg = np.flatnonzero(np.r_[True, doc[lo + 1:hi] != doc[lo:hi - 1]])
            rows = doc[lo + seg]
            out[rows] = np.minimum(out[rows], np.minimum.reduceat(permuted, seg, axis=1).T)
        return out

    def _permute(self, hashes: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            if self.scheme == "affine32":
                return self._a[:, None] * hashes + self._b[:, None]
            h = hashes.astype(np.uint64)
            return ((self._a[:, None] * h + self._b[:, None]) % _MERSENNE) & _MAX32


def _batch_tokens(texts: Sequence[str], langs: Sequence[Optional[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token values of all documents (concatenated), tokens per document, and which documents are
    unspaced: `MinHasher.tokens` + `token_value` for a whole batch, over one UTF-32 buffer."""
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
    n = len(texts)
    word_table, unspaced_table, _, _ = _tables()
    lowered = [t.lower() for t in texts]
    cp = np.frombuffer("\0".join(lowered).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    doc = np.repeat(np.arange(n), [len(t) + 1 for t in lowered])[:cp.size]  # "\0" is no word character
    word = word_table[cp]
    known = np.array([lang is not None and lang != "other" for lang in langs], dtype=bool)
    by_lang = np.array([lang in UNSPACED_LANGS for lang in langs], dtype=bool)
    n_word = np.bincount(doc[word], minlength=n)
    n_unspaced = np.bincount(doc[word & unspaced_table[cp]], minlength=n)
    unspaced = np.where(known, by_lang, (n_unspaced > _UNSPACED_SHARE * n_word) & (n_word > 0))
    # a token starts at a word character after a non-word one, or at every word character if unspaced
    starts = word & (unspaced[doc] | ~np.r_[False, word[:-1]])
    inside = np.flatnonzero(word)
    first = np.flatnonzero(starts[inside])  # token starts, as positions among word characters
    if first.size == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(n, dtype=np.int64), unspaced
    token = np.cumsum(starts[inside]) - 1
    offset = np.arange(inside.size) - first[token]
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.r_[np.uint64(1), np.full(int(offset.max()), _TOKEN_BASE, dtype=np.uint64)])
        values = np.add.reduceat(cp[inside].astype(np.uint64) * powers[offset], first)
    return _fmix64(values), np.bincount(doc[inside[first]], minlength=n), unspaced


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimizing false positives + false negatives at `threshold` (datasketch's search)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r
