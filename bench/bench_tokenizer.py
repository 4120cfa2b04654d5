"""Tokenizer training benchmark: ours (`xdp train-tokenizer`) vs bare `tokenizers` on the same sampled text.

Prints markdown tables:
1. wall time and peak RSS of a full-size training (default 100,534 tokens) against the anchor, which is one
   process that holds the already-sampled text in a list and calls `tokenizers` directly (same pipeline,
   same trainer settings, so both must write the same tokenizer.json);
2. peak RSS against sample size (the curve behind tokenizer_training.memory.RSS_PER_SAMPLE_BYTE);
3. bytes/token per language on held-out text, language-balanced sample vs a plain sample of the same byte
   budget (every document at the same rate);
4. encode throughput with 2 threads;
5. byte-level BPE vs SentencePiece-style BPE with byte fallback (the model choice), at a smaller scale.

    python bench/bench_tokenizer.py --sample-mb 50 --curve-mb 25,35 --work /tmp/tokbench
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # the encode benchmark's 2 threads, set before tokenizers loads

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpus"


# ----------------------------------------------------------------------------- measuring a subprocess


def run_measured(cmd: list[str], log_path: Path) -> dict:
    """Run `cmd`; sample the RSS of it and all its descendants (Ray's raylet and workers included)."""
    import psutil

    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        root = psutil.Process(proc.pid)
        peak_tree = peak_main = 0
        while proc.poll() is None:
            try:
                procs = [root] + root.children(recursive=True)
                rss = [p.memory_info().rss for p in procs if p.is_running()]
                peak_tree, peak_main = max(peak_tree, sum(rss)), max(peak_main, rss[0])
            except psutil.Error:
                pass
            time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log_path}")
    return {"wall_s": wall, "peak_rss_tree": peak_tree, "peak_rss_main": peak_main}


def ours_cmd(out: Path, sample_bytes: int, vocab: int, corpus: Path, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "train-tokenizer", "--input", str(corpus), "--output", str(out),
            "--vocab-size", str(vocab), "--sample-bytes", str(sample_bytes), "--num-cpus", "2", *extra]


# ----------------------------------------------------------------------------- dumping the exact sample


def dump_samples(corpus: Path, sample_bytes: int, work: Path, seed: int) -> dict[str, Path]:
    """Write the balanced sample (what `xdp train-tokenizer` trains on) and a plain one of the same budget."""
    import ray

    from mixing.ratios import load_ratios
    from pipeline.config import TokenizerConfig
    from tokenizer_training.sample_ray import run_census, stream_sample
    from tokenizer_training.sampling import Tally, plan_sample, target_shares
    from tokenizer_training.sources import list_input_files

    cfg = TokenizerConfig()
    ratios = load_ratios()
    languages = frozenset(ratios.languages)
    files = list_input_files(str(corpus))
    ray.init(num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        census = run_census(files, languages)
        shares = target_shares(ratios, cfg.temperature)
        available = {b: census.buckets.bytes.get(b, 0) for b in shares}
        total = sum(available.values())
        plans = {"balanced": plan_sample(shares, available, sample_bytes, seed),
                 "plain": plan_sample({b: n / total for b, n in available.items()}, available, sample_bytes, seed)}
        paths = {}
        for name, plan in plans.items():
            paths[name] = work / f"sample-{name}-{sample_bytes}.jsonl"
            with open(paths[name], "w", encoding="utf-8") as fh:
                for texts in stream_sample(files, plan, languages, Tally(), Tally()):
                    fh.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in texts)
        return paths
    finally:
        ray.shutdown()


def load_texts(path: Path, limit_bytes: int | None = None) -> list[str]:
    texts, size = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line))
            size += len(texts[-1].encode("utf-8"))
            if limit_bytes is not None and size >= limit_bytes:
                break
    return texts


# ----------------------------------------------------------------------------- anchors (run as subprocesses)


def anchor_train(sample: Path, out: Path, vocab: int, kind: str) -> None:
    """The anchor: the whole sample in memory, then `tokenizers` called directly."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from tokenizer_training.train import SPECIAL_TOKENS, new_tokenizer

    texts = load_texts(sample)
    started = time.perf_counter()
    if kind == "byte-level":
        tok = new_tokenizer()
        alphabet, specials = pre_tokenizers.ByteLevel.alphabet(), list(SPECIAL_TOKENS)
    else:  # SentencePiece-style: ▁ word marker, 256 <0xNN> byte-fallback pieces, digits split
        tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=False))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        ])
        tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True),
                                         decoders.ByteFallback(), decoders.Fuse()])
        alphabet, specials = [], list(SPECIAL_TOKENS) + [f"<0x{i:02X}>" for i in range(256)]
    # byte-fallback keeps whole characters: cap them (SentencePiece's character_coverage) or CJK fills the vocab
    limit = {} if kind == "byte-level" else {"limit_alphabet": min(1000, vocab // 4)}
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False, **limit)
    counted: list[float] = []

    def timed_texts():  # marks when the trainer has taken the last text: counting ends, BPE begins
        yield from texts
        counted.append(time.perf_counter())

    tok.train_from_iterator(timed_texts(), trainer=trainer)
    ended = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")
    print(json.dumps({"train_s": ended - started, "count_s": counted[0] - started, "merges_s": ended - counted[0],
                      "vocab": tok.get_vocab_size()}))


# ----------------------------------------------------------------------------- evaluation helpers


def heldout_by_lang(path: Path) -> dict[str, list[str]]:
    import gzip
    import unicodedata

    from mixing.ratios import load_ratios

    languages = set(load_ratios().languages)
    out: dict[str, list[str]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["lang"] in languages:
                out.setdefault(rec["lang"], []).append(unicodedata.normalize("NFC", rec["text"]))
    return out


def bytes_per_token(tok_path: Path, heldout: dict[str, list[str]]) -> tuple[dict[str, float], int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path / "tokenizer.json"))
    result, failures = {}, 0
    for lang, texts in heldout.items():
        encs = tok.encode_batch_fast(texts, add_special_tokens=False)
        decoded = tok.decode_batch([e.ids for e in encs], skip_special_tokens=False)
        failures += sum(d != t for d, t in zip(decoded, texts))
        result[lang] = sum(len(t.encode()) for t in texts) / sum(len(e.ids) for e in encs)
    return result, failures


def encode_throughput(tok_path: Path, texts: list[str]) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path / "tokenizer.json"))
    tok.encode_batch_fast(texts[:200])
    started, cpu_started = time.perf_counter(), time.process_time()
    tokens = sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # CPU seconds (both threads) make the figure comparable on a box shared with other jobs
    return {"tokens": tokens, "seconds": elapsed, "cpu_seconds": cpu, "tokens_per_s": tokens / elapsed,
            "tokens_per_cpu_s": tokens / cpu, "mb_per_s": sum(len(t.encode()) for t in texts) / elapsed / 1e6}


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=SHARED / "docs")
    ap.add_argument("--heldout", type=Path, default=SHARED / "lid_dev.jsonl.gz")
    ap.add_argument("--sample-mb", type=float, default=50)
    ap.add_argument("--curve-mb", default="25,35", help="extra sample sizes (MB) for the memory curve")
    ap.add_argument("--vocab", type=int, default=100_534)
    ap.add_argument("--choice-mb", type=float, default=10, help="sample for the model-choice comparison")
    ap.add_argument("--choice-vocab", type=int, default=16_000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--repeats", type=int, default=1, help="ours/anchor pairs for the full training (median reported)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/xdp-tokbench"))
    ap.add_argument("--anchor", nargs=4, metavar=("SAMPLE", "OUT", "VOCAB", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.anchor:
        sample, out, vocab, kind = args.anchor
        anchor_train(Path(sample), Path(out), int(vocab), kind)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    sample_bytes = int(args.sample_mb * 1e6)
    results: dict = {"sample_bytes": sample_bytes, "vocab": args.vocab}
    print(f"# tokenizer benchmark: {args.sample_mb:g} MB sample, vocab {args.vocab:,}", flush=True)
    samples = dump_samples(args.corpus, sample_bytes, args.work, args.seed)

    def anchor(sample: Path, out: Path, vocab: int, kind: str) -> dict:
        cmd = [sys.executable, __file__, "--anchor", str(sample), str(out), str(vocab), kind]
        m = run_measured(cmd, out.with_suffix(".log"))
        m.update(json.loads(out.with_suffix(".log").read_text().strip().splitlines()[-1]))
        return m

    # 1. full-size training, ours vs anchor on the same sampled text, in alternating pairs
    ours_dir, anchor_dir = args.work / "ours", args.work / "anchor"

    def ours() -> dict:
        m = run_measured(ours_cmd(ours_dir, sample_bytes, args.vocab, args.corpus), args.work / "ours.log")
        report = {**json.loads((ours_dir / "training_report.json").read_text()),
                  **json.loads((ours_dir / "training_run.json").read_text())}  # times and peak memory
        m["report"] = {k: report[k] for k in ("time_s", "peak_rss_bytes", "vocab_size")}
        return m

    runs = {"anchor": lambda: anchor(samples["balanced"], anchor_dir, args.vocab, "byte-level"), "ours": ours}
    pairs = []
    for i in range(args.repeats):  # alternate who goes first, so a slow spell on the box hits both sides
        order = ("anchor", "ours") if i % 2 == 0 else ("ours", "anchor")
        pairs.append({side: runs[side]() for side in order})
    same = (ours_dir / "tokenizer.json").read_bytes() == (anchor_dir / "tokenizer.json").read_bytes()
    ratios = [p["ours"]["wall_s"] / p["anchor"]["wall_s"] for p in pairs]
    median = sorted(range(len(pairs)), key=lambda i: ratios[i])[len(pairs) // 2]
    a, o = pairs[median]["anchor"], pairs[median]["ours"]
    report = o["report"]
    results.update(anchor=a, ours=o, pairs=pairs)
    print("\n## Full training: ours vs bare `tokenizers` on the same sampled text\n")
    if len(pairs) > 1:
        print("| pair | first | bare tokenizers wall | xdp train-tokenizer wall | ratio |")
        print("|---:|---|---:|---:|---:|")
        for i, (p, r) in enumerate(zip(pairs, ratios)):
            print(f"| {i + 1} | {next(iter(p))} | {p['anchor']['wall_s']:.1f} s | {p['ours']['wall_s']:.1f} s | {r:.2f}x |")
        print(f"\nmedian pair ({median + 1}) in full:\n")
    print("| | wall | peak RSS (process tree) | peak RSS (main process) | vocab |")
    print("|---|---:|---:|---:|---:|")
    print(f"| bare tokenizers (text in memory, training only) | {a['wall_s']:.1f} s (train {a['train_s']:.1f} s) | "
          f"{mib(a['peak_rss_tree'])} | {mib(a['peak_rss_main'])} | {a['vocab']:,} |")
    print(f"| xdp train-tokenizer (Ray census + streamed sample + training) | {o['wall_s']:.1f} s | "
          f"{mib(o['peak_rss_tree'])} | {mib(o['peak_rss_main'])} | {report['vocab_size']:,} |")
    print(f"| **ratio ours / anchor** | **{o['wall_s'] / a['wall_s']:.2f}x** | "
          f"**{o['peak_rss_tree'] / a['peak_rss_tree']:.2f}x** | **{o['peak_rss_main'] / a['peak_rss_main']:.2f}x** | |")
    t = report["time_s"]
    print(f"\nphases of the median pair, in process: ours census (Ray start included) {t['census']} s, "
          f"sample + word count {t['sample_and_count']} s, merges {t['merges']} s (total {t['total']} s); "
          f"anchor word count {a['count_s']:.1f} s, merges {a['merges_s']:.1f} s. "
          f"Identical tokenizer.json (last pair): {same}", flush=True)
    results["identical_tokenizer_json"] = same

    # 2. memory curve
    curve = [(sample_bytes, results["ours"])]
    for mb in [float(x) for x in args.curve_mb.split(",") if x]:
        n = int(mb * 1e6)
        m = run_measured(ours_cmd(args.work / f"ours-{n}", n, args.vocab, args.corpus), args.work / f"ours-{n}.log")
        m["driver_peak"] = json.loads((args.work / f"ours-{n}" / "training_run.json").read_text())["peak_rss_bytes"]
        curve.append((n, m))
    results["ours"]["driver_peak"] = report["peak_rss_bytes"]
    print("\n## Peak RSS against sample size (ours, vocab fixed)\n")
    print("| sample | wall | driver peak RSS (report) | process-tree peak RSS |")
    print("|---:|---:|---:|---:|")
    for n, m in sorted(curve, key=lambda c: c[0]):
        print(f"| {n / 1e6:g} MB | {m['wall_s']:.1f} s | {mib(m['driver_peak'])} | {mib(m['peak_rss_tree'])} |")
    pts = sorted((n, m["driver_peak"]) for n, m in curve)
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(pts, pts[1:])]
    print(f"\ndriver RSS slope between sizes: {', '.join(f'{s:.2f}' for s in slopes)} bytes per sample byte", flush=True)
    results["curve"] = [{"sample_bytes": n, **{k: v for k, v in m.items() if k != "report"}} for n, m in curve]

    # 3. balanced vs plain sample of the same budget
    plain_dir = args.work / "plain"
    results["plain"] = anchor(samples["plain"], plain_dir, args.vocab, "byte-level")
    heldout = heldout_by_lang(args.heldout)
    bal, bal_fail = bytes_per_token(ours_dir, heldout)
    pla, pla_fail = bytes_per_token(plain_dir, heldout)
    print("\n## Bytes per token on held-out lid_dev: language-balanced vs plain sample (same byte budget)\n")
    print("| lang | balanced | plain | balanced / plain |")
    print("|---|---:|---:|---:|")
    for lang in sorted(heldout, key=lambda l: -bal[l] / pla[l]):
        print(f"| {lang} | {bal[lang]:.3f} | {pla[lang]:.3f} | {bal[lang] / pla[lang]:.3f} |")
    print(f"\nround-trip failures on {sum(map(len, heldout.values())):,} held-out texts: "
          f"balanced {bal_fail}, plain {pla_fail}", flush=True)
    results["heldout"] = {"balanced": bal, "plain": pla, "failures": [bal_fail, pla_fail]}

    # 4. encode throughput
    texts = load_texts(samples["balanced"], limit_bytes=20_000_000)
    thr = encode_throughput(ours_dir, texts)
    print(f"\n## Encode throughput (RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}, encode_batch_fast)\n")
    print(f"{thr['tokens']:,} tokens in {thr['seconds']:.2f} s wall, {thr['cpu_seconds']:.2f} CPU-s: "
          f"**{thr['tokens_per_s'] / 1e6:.2f} M tokens/s** ({thr['mb_per_s']:.1f} MB/s of text), "
          f"{thr['tokens_per_cpu_s'] / 1e6:.2f} M tokens per CPU-second", flush=True)
    results["encode"] = thr

    # 5. model choice at a smaller scale
    small = args.work / f"sample-choice-{args.choice_mb:g}.jsonl"
    small.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n"
                             for t in load_texts(samples["balanced"], int(args.choice_mb * 1e6))), encoding="utf-8")
    choice = {}
    for kind in ("byte-level", "byte-fallback"):
        out = args.work / f"choice-{kind}"
        m = anchor(small, out, args.choice_vocab, kind)
        choice[kind] = (m, *bytes_per_token(out, heldout))
    print(f"\n## Model choice: byte-level BPE vs SentencePiece-style BPE + byte fallback "
          f"({args.choice_mb:g} MB, vocab {args.choice_vocab:,})\n")
    print("| lang | byte-level bytes/token | byte-fallback bytes/token | ratio |")
    print("|---|---:|---:|---:|")
    bl, bf = choice["byte-level"][1], choice["byte-fallback"][1]
    for lang in sorted(heldout):
        print(f"| {lang} | {bl[lang]:.3f} | {bf[lang]:.3f} | {bl[lang] / bf[lang]:.3f} |")
    for kind, (m, _, fails) in choice.items():
        print(f"\n{kind}: train {m['train_s']:.1f} s, peak RSS {mib(m['peak_rss_tree'])}, "
              f"round-trip failures {fails} of {sum(map(len, heldout.values())):,}")
    results["choice"] = {k: {"train": v[0], "bytes_per_token": v[1], "failures": v[2]} for k, v in choice.items()}
    (args.work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
