"""The language-balanced sample plan and the per-document decision (pure functions, no Ray).

Buckets are the ratio table's natural languages plus one `code` bucket. Shares follow the table with a
temperature floor (`share ** T`, renormalized) so thin languages still earn merges; code keeps its
category share. A bucket with less text than its share asks is taken whole and its unused budget goes
to the others (water-filling), so the sample still reaches `sample_bytes` when the corpus allows.

A document is kept when `hash(seed, id) < rate[bucket]`: the decision depends on the seed and the
document alone, never on arrival order or worker count, so the sample is the same on any cluster.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from mixing.ratios import RatioTables

CODE = "code"
_U64 = float(2**64)


def target_shares(ratios: RatioTables, temperature: float) -> dict[str, float]:
    """Bucket -> share of the sample: code at its category share, languages at `p ** T`, renormalized."""
    code = ratios.categories.get(CODE, 0.0)
    weights = {lang: p ** temperature for lang, p in ratios.languages.items() if p > 0}
    total = sum(weights.values())
    shares = {lang: (1.0 - code) * w / total for lang, w in weights.items()}
    if code > 0:
        shares[CODE] = code
    return shares


def buckets_of(table: pa.Table, languages: frozenset[str]) -> pa.ChunkedArray:
    """Each row's bucket; null for text outside the table's languages (skipped and reported)."""
    lang = table.column("lang")
    known = pc.if_else(pc.is_in(lang, value_set=pa.array(sorted(languages), pa.string())), lang, None)
    return pc.if_else(pc.fill_null(pc.equal(table.column("category"), CODE), False), CODE, known)


@dataclass
class Tally:
    """Documents and UTF-8 bytes per key; merges across files and workers."""

    docs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, key: str, nbytes: int, ndocs: int = 1) -> None:
        self.docs[key] += ndocs
        self.bytes[key] += nbytes

    def add_texts(self, keys: pa.ChunkedArray, texts: pa.ChunkedArray, missing: str) -> None:
        """Each text's UTF-8 bytes under its key (a null key under `missing`), summed in Arrow."""
        sizes = pa.table({"key": pc.fill_null(keys, missing), "bytes": pc.binary_length(texts)})
        # use_threads=False: Arrow's threaded group-by can fail inside CPU-limited Ray workers.
        for row in sizes.group_by("key", use_threads=False).aggregate([("bytes", "sum"), ("bytes", "count")]) \
                .to_pylist():
            self.add(row["key"], row["bytes_sum"], row["bytes_count"])

    def merge(self, other: "Tally") -> None:
        for key in other.docs:
            self.add(key, other.bytes[key], other.docs[key])

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {k: {"docs": self.docs[k], "bytes": self.bytes[k]} for k in sorted(self.docs)}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, int]]) -> "Tally":
        tally = cls()
        for key, v in data.items():
            tally.add(key, v["bytes"], v["docs"])
        return tally


SKIPPED = "(skipped)"


def census(table: pa.Table, languages: frozenset[str]) -> Tally:
    """Bytes and documents per bucket in one batch; text outside the buckets counts under SKIPPED."""
    tally = Tally()
    tally.add_texts(buckets_of(table, languages), table.column("text"), missing=SKIPPED)
    return tally


@dataclass(frozen=True)
class SamplePlan:
    seed: int
    shares: dict[str, float]
    asked: dict[str, int]  # bytes each bucket's share asks for
    available: dict[str, int]  # bytes each bucket has in the input
    planned: dict[str, int]  # bytes expected after water-filling
    rates: dict[str, float]  # per-document keep probability

    @property
    def short(self) -> list[str]:
        """Buckets with less text than their share asks (taken whole)."""
        return sorted(b for b in self.shares if self.available.get(b, 0) < self.asked[b])

    @property
    def planned_bytes(self) -> int:
        return sum(self.planned.values())

    @property
    def exhausts_input(self) -> bool:
        return all(r >= 1.0 for r in self.rates.values())


def plan_sample(shares: dict[str, float], available: dict[str, int], sample_bytes: int, seed: int) -> SamplePlan:
    """Split `sample_bytes` over the buckets by share, capped by what each bucket has (water-filling)."""
    planned: dict[str, float] = {}
    remaining = float(sample_bytes)
    active = {b for b, s in shares.items() if s > 0 and available.get(b, 0) > 0}
    while active and remaining > 0:
        weight = sum(shares[b] for b in active)
        full = {b for b in active if available[b] <= remaining * shares[b] / weight}
        if not full:
            planned.update({b: remaining * shares[b] / weight for b in active})
            break
        for b in full:
            planned[b] = float(available[b])
            remaining -= available[b]
        active -= full
    rates = {b: min(1.0, planned[b] / available[b]) for b in planned}
    return SamplePlan(
        seed=seed,
        shares=dict(shares),
        asked={b: int(round(s * sample_bytes)) for b, s in shares.items()},
        available={b: int(available.get(b, 0)) for b in shares},
        planned={b: int(round(planned.get(b, 0.0))) for b in shares},
        rates=rates,
    )


def keep_score(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the document id."""
    return xxhash.xxh64_intdigest(doc_id.encode("utf-8"), seed=seed & 0xFFFFFFFFFFFFFFFF) / _U64


def select(table: pa.Table, plan: SamplePlan, languages: frozenset[str]) -> pa.Table:
    """The rows of one batch that belong to the sample, with their bucket (columns text, bucket, category)."""
    buckets = buckets_of(table, languages).combine_chunks()
    names = sorted(plan.rates)
    rates = pc.fill_null(pa.array([plan.rates[b] for b in names], pa.float64()).take(
        pc.index_in(buckets, value_set=pa.array(names, pa.string()))), 0.0)
    keep = pc.greater_equal(rates, 1.0)
    drawn = pc.and_(pc.greater(rates, 0.0), pc.invert(keep))  # only these need the per-document hash
    rows = pc.indices_nonzero(drawn)
    if len(rows):
        scores = [keep_score(plan.seed, doc_id) for doc_id in table.column("id").take(rows).to_pylist()]
        won = pc.less(pa.array(scores, pa.float64()), rates.take(rows))
        keep = pc.replace_with_mask(keep, drawn, won)
    picked = pa.table({"text": table.column("text"), "bucket": buckets, "category": table.column("category")})
    return picked.filter(keep)
