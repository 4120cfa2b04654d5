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
    """Samples RSS of the driver (this process, or `root`) and all its descendants (Ray's raylet,
    workers, actors).

    Per pid: `peaks` (RSS), `private` (RSS less shared pages: what the process allocated itself, without
    the object-store and library pages it maps, which RSS counts in every process that touches them),
    `names` (the latest name; a Ray worker's names the task or actor it runs), `by_name` (the peak RSS
    under each name the process had: which task grew a worker), `private_by_name` (the same for private
    memory: whether a task grew the worker's own memory or only the shared pages it maps) and `parents`
    (to place a worker under its raylet, i.e. on its node). `grew_by` holds, per pid and name, the most RSS rose above its level
    when the process took that name: Ray reuses workers, so a peak under a name may be memory an
    earlier task left behind, while the rise is what the task itself added.
    `tree` is the largest sum of RSS over all processes at one sample; `tree_pss` the largest sum of PSS,
    which splits each shared page among the processes that map it, so the object store counts once.
    A `ray.cluster_utils.Cluster` started in this process is sampled too: its nodes are children of it.
    """

    def __init__(self, interval: float = 0.5, root: int | None = None):
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.root = root or os.getpid()  # the driver: this process, or the one running the job
        self.peaks, self.private, self.names, self.by_name, self.parents = {}, {}, {}, {}, {}
        self.grew_by, self._entered, self.private_by_name = {}, {}, {}
        self.tree = self.tree_pss = 0

    def run(self):
        me = psutil.Process(self.root)
        while not self.stop.is_set():
            total = total_pss = 0
            try:
                tree = [me] + me.children(recursive=True)
            except psutil.NoSuchProcess:  # the job's process has ended
                return
            for p in tree:
                try:
                    with p.oneshot():
                        mem, ppid = p.memory_full_info(), p.ppid()
                        name = p.name() if p.pid != me.pid else "driver"
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += mem.rss
                total_pss += mem.pss
                self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), mem.rss)
                private = mem.rss - mem.shared
                self.private[p.pid] = max(self.private.get(p.pid, 0), private)
                if self.names.get(p.pid) != name:
                    self._entered[p.pid] = mem.rss
                rise = self.grew_by.setdefault(p.pid, {})
                rise[name] = max(rise.get(name, 0), mem.rss - self._entered[p.pid])
                self.names[p.pid], self.parents[p.pid] = name, ppid
                named = self.by_name.setdefault(p.pid, {})
                named[name] = max(named.get(name, 0), mem.rss)
                own = self.private_by_name.setdefault(p.pid, {})
                own[name] = max(own.get(name, 0), private)
            self.tree, self.tree_pss = max(self.tree, total), max(self.tree_pss, total_pss)
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
