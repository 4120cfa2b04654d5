"""Mixing benchmark on ../shared/corpus/docs with the XVERSE-65B tables.

Measures, in one run on the same machine:
1. Ratio accuracy of the full Ray job (`mixing.job.mix_from_config`): realized vs target share for
   every category, language and programming language (the corpus' declared labels stand in for the
   clean job's output), and packing efficiency / documents split vs concatenate-and-chunk.
   Also in-context repeats: copies of one document in one sequence, as written (kept apart) and with
   the same pieces repacked by plain best-fit (copies allowed together); and the sequences that keeping
   copies apart uses on seeded synthetic mixes, against the least possible.
2. Throughput per core, single process, on the same text: our tokenize (+EOS, hashes, Arrow) + best-fit
   pack + shard write against bare `tokenizers` `encode_batch` (and `encode_batch_fast`).

The tokenizer is a byte-level BPE (32k) trained here on a 20 MB hash sample. Prints markdown tables.
Usage: python bench/bench_mixing.py [--work bench/results/mixing] [--throughput-mb 30]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core per tokenizer, as in a Ray worker

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import xxhash
import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = REPO / ".." / "shared" / "corpus" / "docs"


def copies_table(shard_dir: Path) -> str:
    """In-context repeats of the written shards (copies of a document kept apart) against the same
    pieces repacked by plain best-fit (copies allowed together), as a markdown table."""
    from mixing.packing import best_fit_decreasing
    from mixing.reader import PackedShards

    shards = PackedShards(shard_dir, verify=False)
    length = shards.sequence_length
    rows = []  # per sequence: [(piece length, piece content hash)]
    for i in range(len(shards)):
        ids, cu = shards[i]["input_ids"].numpy(), shards[i]["cu_seqlens"].tolist()
        rows.append([(b - a, xxhash.xxh64_intdigest(ids[a:b].tobytes())) for a, b in zip(cu, cu[1:])])
    pieces = [p for row in rows for p in row]
    lengths = np.array([n for n, _ in pieces])
    repacked = [[pieces[i] for i in b] for b in best_fit_decreasing(lengths, length)]

    def measure(seqs) -> tuple[int, float, int, float]:
        repeat_rows, repeat_tokens = 0, 0
        for row in seqs:
            seen: set = set()
            repeats = sum(n for n, h in row if h in seen or seen.add(h))
            repeat_rows += repeats > 0
            repeat_tokens += repeats
        total = int(lengths.sum())
        return len(seqs), total / (len(seqs) * length), repeat_rows, repeat_tokens / total

    ours, plain = measure(rows), measure(repacked)
    lines = ["| | copies kept apart (xdp) | copies allowed (plain best-fit, same pieces) |", "|---|---:|---:|",
             f"| sequences | {ours[0]:,} | {plain[0]:,} |",
             f"| efficiency | {100 * ours[1]:.3f}% | {100 * plain[1]:.3f}% |",
             f"| sequences holding a document twice or more | {ours[2]:,} | {plain[2]:,} |",
             f"| tokens repeating a document earlier in their sequence | {100 * ours[3]:.1f}% | {100 * plain[3]:.1f}% |",
             f"| tokens neither padding nor such a repeat | {100 * ours[1] * (1 - ours[3]):.3f}% | "
             f"{100 * plain[1] * (1 - plain[3]):.3f}% |"]
    return "\n".join(lines)


def synthetic_packing_table(capacity: int = 16_384, cases: int = 8) -> str:
    """Sequences used with copies kept apart, against the least possible (tokens / capacity, rounded up)
    and plain best-fit (copies allowed together), on seeded mixes with log-normal lengths and 0-100 %
    of documents copied 2-4 times. Shows the copy rule costs (almost) no sequences beyond the corpus."""
    from mixing.packing import best_fit_decreasing

    rng = np.random.default_rng(0)
    lines = ["| case | copied docs | pieces | least possible | copies apart (xdp) | plain best-fit |",
             "|---:|---:|---:|---:|---:|---:|"]
    for case in range(cases):
        n = int(rng.integers(3000, 8000))
        base = np.minimum(rng.lognormal(5.5 if case % 2 else 6.5, 1.3, n).astype(np.int64) + 1, capacity)
        share = (0.0, 0.3, 0.7, 1.0)[case % 4]
        copies = np.where(rng.random(n) < share, rng.integers(2, 5, n), 1)
        lengths, groups = np.repeat(base, copies), np.repeat(np.arange(n), copies).tolist()
        least = -(-int(lengths.sum()) // capacity)
        apart, plain = best_fit_decreasing(lengths, capacity, groups), best_fit_decreasing(lengths, capacity)
        lines.append(f"| {case} | {share:.0%} | {lengths.size:,} | {least:,} | {len(apart):,} | {len(plain):,} |")
    return "\n".join(lines)


def load_corpus() -> pa.Table:
    rows = []
    for path in sorted(CORPUS.glob("*.jsonl.zst")):
        with open(path, "rb") as fh:
            text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
            for line in text:
                d = json.loads(line)
                rows.append({"id": d["id"], "text": d["text"], "category": d["category"],
                             "lang": d.get("lang"), "code_lang": d.get("code_lang"), "source": d.get("source")})
    return pa.Table.from_pylist(rows)


def write_cleaned(table: pa.Table, out: Path) -> None:
    pds.write_dataset(table, out, format="parquet", partitioning=["category", "lang"],
                      partitioning_flavor="hive", existing_data_behavior="delete_matching")


def hash_sample(table: pa.Table, max_chars: int, seed: int) -> pa.Table:
    keys = np.array([xxhash.xxh64_intdigest(i.encode(), seed) for i in table.column("id").to_pylist()], dtype=np.uint64)
    order = np.argsort(keys)
    lengths = np.array([len(t) for t in table.column("text").to_pylist()])[order]
    take = order[: int(np.searchsorted(np.cumsum(lengths), max_chars)) + 1]
    return table.take(pa.array(np.sort(take)))


def train_tokenizer(texts: list[str], out: Path, vocab: int = 32_000) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "pad_token": "<pad>"}))


def ratio_rows(stats: dict) -> tuple[list[str], list[str]]:
    """All entries (target, plan, realized) and those more than 0.5 pp off target, with the reason."""
    rows, misses = [], []
    issues = {(i["table"], i["name"]): i for i in stats["issues"]}
    for table in ("categories", "languages", "code_languages"):
        for name, v in stats[table].items():
            diff = 100 * (v["realized"] - v["target"])
            rows.append(f"| {table} | {name} | {100 * v['target']:.3f} | {100 * v['planned']:.3f} | "
                        f"{100 * v['realized']:.3f} | {diff:+.3f} | {100 * (v['realized'] - v['planned']):+.3f} |")
            if abs(diff) > 0.5:
                renormalized = {"status": "renormalized", "detail": "planned share above target: entries of "
                                "this table without data were dropped and the rest scaled up"}
                granularity = {"status": "-", "detail": "document granularity"}
                issue = issues.get((table, name), renormalized if v["planned"] > v["target"] else granularity)
                misses.append(f"| {table} | {name} | {diff:+.3f} | {issue['status']}: {issue['detail']} |")
    return rows, misses


def throughput(table: pa.Table, tokenizer_dir: Path, work: Path) -> list[str]:
    """Single process, single thread: ours (tokenize+pack+write) vs bare encode_batch on the same text."""
    from tokenizers import Tokenizer

    from mixing.packing import Packer
    from mixing.shards import ShardWriter
    from mixing.tokenize import Tokenize

    texts = table.column("text").to_pylist()
    batch = 256
    results = {}
    for name in ("encode_batch", "encode_batch_fast"):
        fn = getattr(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")), name)  # fresh: cold BPE cache
        t0, n = time.perf_counter(), 0
        for i in range(0, len(texts), batch):
            n += sum(len(e.ids) for e in fn(texts[i:i + batch], add_special_tokens=False))
        results[name] = (n, time.perf_counter() - t0)
    stage = Tokenize(str(tokenizer_dir), seed=1)
    out = work / "throughput-shards"
    t0, n = time.perf_counter(), 0
    packer = Packer(16_384, window_sequences=1024, seed=1)
    writer = ShardWriter(out, 16_384, pad_id=0, sequences_per_shard=256, vocab_size=stage.info.vocab_size)
    for i in range(0, table.num_rows, batch):
        tokens = stage(table.slice(i, batch)).column("tokens")
        n += len(tokens.combine_chunks().values) - len(tokens)  # EOS not counted, as in the anchors
        offsets, values = tokens.combine_chunks().offsets.to_numpy(), tokens.combine_chunks().values.to_numpy()
        for j in range(len(offsets) - 1):
            for seq in packer.add(values[offsets[j]:offsets[j + 1]]):
                writer.add(seq.tokens, seq.cu_seqlens)
    for seq in packer.flush():
        writer.add(seq.tokens, seq.cu_seqlens)
    writer.close()
    results["ours: tokenize+pack+write"] = (n, time.perf_counter() - t0)
    shutil.rmtree(out)
    base = results["encode_batch"][0] / results["encode_batch"][1]
    return [f"| {k} | {n:,} | {s:.1f} | {n / s:,.0f} | {n / s / base:.2f}x |" for k, (n, s) in results.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(REPO / "bench" / "results" / "mixing"))
    ap.add_argument("--throughput-mb", type=float, default=30.0)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    corpus = load_corpus()
    print(f"loaded {corpus.num_rows:,} documents in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cleaned, tokenizer_dir = work / "cleaned", work / "tokenizer"
    if not cleaned.is_dir():
        write_cleaned(corpus, cleaned)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        t0 = time.perf_counter()
        train_tokenizer(hash_sample(corpus, 20_000_000, seed=7).column("text").to_pylist(), tokenizer_dir)
        print(f"trained tokenizer in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    import ray

    from mixing.job import mix_from_config
    from pipeline.config import config_from_dict

    cfg = config_from_dict({"inputs": [{"path": str(cleaned), "category_field": "category"}],
                            "output": str(work / "out"), "ray": {"num_cpus": 2}})
    ray.init(num_cpus=2, object_store_memory=400 * 1024**2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    t0 = time.perf_counter()
    summary = mix_from_config(cfg, str(cleaned), str(tokenizer_dir), str(work / "out"))
    job_s = time.perf_counter() - t0
    ray.shutdown()
    stats = json.loads((work / "out" / "shards" / "manifest.json").read_text())["stats"]
    rows, misses = ratio_rows(stats)
    p = stats["packing"]

    print("## Mixing on shared/corpus/docs (XVERSE-65B tables)\n")
    print(f"Full Ray job (2 CPUs): {job_s:.0f} s wall; budget {stats['total_tokens']:,} tokens "
          f"({stats['budget_rule']}, cap {stats['max_epochs']:g} epochs); report: {summary['report']}\n")
    print("| packing | value |\n|---|---:|")
    print(f"| sequences of 16,384 | {p['sequences']:,} |\n| efficiency | {100 * p['efficiency']:.3f}% |")
    print(f"| documents | {p['documents']:,} |\n| split (best-fit) | {p['split_documents']:,} |")
    print(f"| split (concatenate-and-chunk, same order) | {p['concat_split_documents']:,} |\n")
    print(copies_table(work / "out" / "shards") + "\n")
    print("Packing of synthetic mixes (sequences used):\n\n" + synthetic_packing_table() + "\n")
    print(f"Entries off target by more than 0.5 pp: {len(misses)}\n")
    if misses:
        print("| table | entry | diff (pp) | reason |\n|---|---|---:|---|")
        print("\n".join(misses) + "\n")
    for table in ("categories", "languages", "code_languages"):
        worst = max(abs(v["realized"] - v["planned"]) for v in stats[table].values())
        print(f"Largest |realized - planned| in {table}: {100 * worst:.3f} pp")
    print("\n| table | entry | target % | planned % | realized % | realized - target pp | realized - planned pp |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows) + "\n")

    sample = hash_sample(corpus, int(args.throughput_mb * 1e6), seed=3)
    print(f"## Throughput per core (single process, RAYON_NUM_THREADS=1, {sample.num_rows:,} documents, "
          f"{args.throughput_mb:g} MB of text)\n")
    print("| pipeline | tokens | seconds | tokens/s | vs encode_batch |\n|---|---:|---:|---:|---:|")
    print("\n".join(throughput(sample, tokenizer_dir, work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
