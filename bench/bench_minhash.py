"""MinHash signatures per core: `MinHasher.signatures` vs datasketch (naive loop, bulk + LeanMinHash) and rensa.

Every method gets the same ~2 KB English documents (cut at word boundaries from the shared corpus),
word 5-gram shingles and 128 permutations, in one process; shingling is timed as part of the job
(the other libraries get the usual Python shingler: ``\\w+`` over the lower-cased text, joined 5-grams).
The last two rows time only the permutation + minimum step, on shingle hashes computed beforehand:
ours in numpy against rensa in Rust, the ceiling for that part of the job.
docs/s are from CPU time of this process (`time.process_time`), so other jobs on a shared machine
distort them less than wall time; both are printed. Peak memory: tracemalloc, in a separate pass.

    python bench/bench_minhash.py [--docs 3000] [--naive-docs 300]
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import re
import time
import tracemalloc
from pathlib import Path

import numpy as np

from pipeline.minhash import MinHasher, has_words

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus" / "docs"
DOC_CHARS = 2000
NUM_PERM = 128


def load_docs(n: int) -> list[str]:
    """n English documents of ~DOC_CHARS characters, cut at whitespace from the shared corpus."""
    import zstandard

    docs: list[str] = []
    for shard in sorted(CORPUS.resolve().glob("*.jsonl.zst")):
        with open(shard, "rb") as raw:
            text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
            for line in text:
                rec = json.loads(line)
                if rec.get("lang") != "en":
                    continue
                body = rec["text"]
                while len(body) >= DOC_CHARS:
                    cut = body.rfind(" ", 0, DOC_CHARS) if " " in body[:DOC_CHARS] else DOC_CHARS
                    docs.append(body[:cut])
                    body = body[cut + 1:]
                    if len(docs) == n:
                        return docs
    if not docs:
        raise SystemExit(f"no English documents under {CORPUS}")
    return (docs * (n // len(docs) + 1))[:n]


_WORD = re.compile(r"\w+")


def _shingle_strings(text: str, n: int = 5) -> list[str]:
    words = _WORD.findall(text.lower())
    return [" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))]


def naive_datasketch(docs: list[str]) -> None:
    from datasketch import MinHash

    for text in docs:
        m = MinHash(num_perm=NUM_PERM)
        for s in _shingle_strings(text):
            m.update(s.encode("utf-8"))


def datasketch_bulk(docs: list[str]) -> None:
    from datasketch import LeanMinHash, MinHash

    sets = [[s.encode("utf-8") for s in _shingle_strings(t)] for t in docs]
    [LeanMinHash(m) for m in MinHash.bulk(sets, num_perm=NUM_PERM)]


def rensa(docs: list[str]) -> None:
    from rensa import RMinHash

    for text in docs:
        m = RMinHash(num_perm=NUM_PERM, seed=1)
        m.update(_shingle_strings(text))
        m.digest()


def shingle_hashes(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Our shingle hashes, computed before the clock starts for the two permutation-only rows."""
    parts = [MinHasher().shingle_hashes(docs[i:i + 32]) for i in range(0, len(docs), 32)]
    return np.concatenate([h for h, _ in parts]), np.concatenate([c for _, c in parts])


def rensa_permutations(hashed: tuple[np.ndarray, np.ndarray]) -> None:
    from rensa import RMinHash

    hashes, counts = hashed
    offsets = np.r_[0, np.cumsum(counts)].astype(np.uint64)
    RMinHash.digest_matrix_from_flat_token_hashes(hashes.astype(np.uint64), offsets, NUM_PERM, 1)


def ours_permutations(hashed: tuple[np.ndarray, np.ndarray]) -> None:
    MinHasher(num_perm=NUM_PERM).signatures_from_hashes(*hashed)


def ours(docs: list[str]) -> None:
    MinHasher(num_perm=NUM_PERM).signatures(docs)


def ours_word_check(docs: list[str]) -> None:
    has_words(docs)


def ours_legacy(docs: list[str]) -> None:
    MinHasher(num_perm=NUM_PERM, scheme="legacy").signatures(docs)


METHODS = [  # (name, function, input: naive = the first --naive-docs texts, docs = all texts, hashes)
    ("datasketch naive: MinHash() + update() per shingle (anchor)", naive_datasketch, "naive"),
    ("datasketch MinHash.bulk + LeanMinHash", datasketch_bulk, "docs"),
    ("**xdp MinHasher.signatures** (affine32, default)", ours, "docs"),
    ("xdp MinHasher.signatures (scheme=legacy)", ours_legacy, "docs"),
    ("xdp has_words alone (near dedup's check for documents without a word)", ours_word_check, "docs"),
    ("rensa RMinHash.update (Rust) over Python shingles", rensa, "docs"),
    ("permutations only, from precomputed shingle hashes: xdp (numpy)", ours_permutations, "hashes"),
    ("permutations only, from precomputed shingle hashes: rensa (Rust; ceiling)", rensa_permutations, "hashes"),
]


def measure(fn, payload, n: int) -> dict:
    fn(payload)  # warm-up: imports, tables, caches
    wall, cpu = time.perf_counter(), time.process_time()
    fn(payload)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tracemalloc.start()
    fn(payload)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"docs": n, "cpu_rate": n / cpu, "wall_rate": n / wall, "peak_mb": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=3000, help="documents for the fast methods")
    ap.add_argument("--naive-docs", type=int, default=300, help="documents for the naive loop")
    args = ap.parse_args()
    docs = load_docs(args.docs)
    mean_chars = float(np.mean([len(d) for d in docs]))
    inputs = {"naive": docs[:args.naive_docs], "docs": docs, "hashes": shingle_hashes(docs)}
    results = [(name, measure(fn, inputs[which], len(docs[:args.naive_docs]) if which == "naive" else len(docs)))
               for name, fn, which in METHODS]
    anchor = results[0][1]["cpu_rate"]
    print(f"MinHash signatures, {NUM_PERM} permutations, word 5-grams, {len(docs)} English docs of "
          f"{mean_chars:.0f} chars ({platform.machine()}, {platform.python_version()}, one process)\n")
    print("| method | docs | docs/s per core (CPU) | docs/s (wall) | vs naive datasketch | peak traced MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results:
        print(f"| {name} | {r['docs']} | {r['cpu_rate']:,.0f} | {r['wall_rate']:,.0f} | "
              f"{r['cpu_rate'] / anchor:.1f}x | {r['peak_mb']:.1f} |")


if __name__ == "__main__":
    main()
