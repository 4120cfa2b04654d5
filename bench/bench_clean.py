"""Benchmark `xdp clean` on ../shared/corpus/docs: MB/s, peak memory per process, documents removed per stage.

    python bench/bench_clean.py [--docs ../shared/corpus/docs] [--limit-files N] [--num-cpus 2]

Runs the clean job on a local Ray while a sampler thread records the peak RSS of the driver and of
every Ray worker process; prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


class PeakRSS(threading.Thread):
    """Samples RSS of this process and all its descendants (Ray's raylet, workers, actors)."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.peaks, self.names, self.stop = interval, {}, {}, threading.Event()

    def run(self):
        me = psutil.Process()
        while not self.stop.is_set():
            for p in [me] + me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
                self.names[p.pid] = p.name() if p.pid != me.pid else "driver"
            time.sleep(self.interval)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", default=str(REPO.parent / "shared" / "corpus" / "docs"))
    ap.add_argument("--limit-files", type=int, default=0, help="use only the first N shards (0: all)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--output", default=None)
    args = ap.parse_args()

    from pipeline.clean_job import run_clean
    from pipeline.config import config_from_dict

    files = sorted(Path(args.docs).glob("*.jsonl.zst"))
    if args.limit_files:
        files = files[: args.limit_files]
    out = Path(args.output or tempfile.mkdtemp(prefix="bench-clean-")) / "out"
    cfg = config_from_dict({
        "inputs": [{"path": str(f), "category_field": "category", "code_lang_field": "code_lang",
                    "path_field": "path"} for f in files],
        "output": str(out),
        "ray": {"num_cpus": args.num_cpus},
    })
    sampler = PeakRSS()
    sampler.start()
    start = time.perf_counter()
    stats = run_clean(cfg)
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()

    read = stats["stages"]["read"]["in"]
    size_mb = read["chars"] / 1e6
    timings = json.loads((out / "timings.json").read_text())["clean"]
    print(f"## xdp clean on {len(files)} files of {args.docs} ({args.num_cpus} CPUs)\n")
    print("| metric | value |\n|---|---:|")
    print(f"| documents read | {read['docs']:,} |")
    print(f"| characters read | {read['chars']:,} |")
    print(f"| wall time (s, Ray start-up included) | {wall:.1f} |")
    print(f"| throughput (M chars/s) | {size_mb / wall:.2f} |")
    for stage, secs in timings.items():
        print(f"| time in {stage} (s) | {secs:.1f} |")
    for stage in ("read", "normalize", "langid", "exact_dedup", "near_dedup"):
        s = stats["stages"][stage]
        removed = sum(v["docs"] for v in s["dropped"].values()) + sum(v["docs"] for v in s["quarantined"].values())
        print(f"| removed at {stage} (docs) | {removed:,} |")
    print(f"| kept (docs) | {stats['accounting']['kept']:,} |")
    by_kind: dict[str, int] = {}
    for pid, peak in sampler.peaks.items():
        kind = sampler.names.get(pid, "?")
        by_kind[kind] = max(by_kind.get(kind, 0), peak)
    for kind, peak in sorted(by_kind.items(), key=lambda kv: -kv[1])[:8]:
        print(f"| peak RSS {kind} (MB) | {peak / 2**20:,.0f} |")


if __name__ == "__main__":
    main()
