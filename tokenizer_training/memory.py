"""Bounded memory for BPE training: predict the peak before training, measure it during.

The `tokenizers` BPE trainer keeps every distinct pre-tokenized word with its count and, while merging,
each word's symbol list plus the pair index; its memory grows with the sample, not with the vocabulary
(tokenizers#1681, #1824). We measured peak RSS against sample size on the multilingual corpus (see
docs/tokenizer.md, "Memory"); the growth is close to linear, so the guard caps the sample *before*
training at the size whose predicted peak fits `max_memory`, instead of dying in the merge phase.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import psutil

# Peak RSS added per byte of sample at vocab 100,534, measured on /work/shared/corpus/docs with the shipped
# pre-tokenizer (docs/tokenizer.md, "Memory": slopes of 13.6 and 16.2 between 25, 35 and 50 MB samples;
# 18 leaves ~10 % headroom). A corpus with more distinct words per byte needs a lower --max-memory.
RSS_PER_SAMPLE_BYTE = 18.0
# What the driver itself holds when training starts (Ray's client, the census), set aside from max_memory
# before the sample is sized: a constant, not the live RSS, so that the cap -- and with it the sample
# and the tokenizer -- depends only on the setting (measured: 300-330 MiB on a 2-core box, moving by tens
# of MB between identical runs).
DRIVER_ALLOWANCE_BYTES = 512 * 2**20
# Share of this machine's RAM one training may use by default: the trainer is one process and the rest
# of the box (Ray workers, object store, other jobs) needs the remainder.
DEFAULT_RAM_SHARE = 0.5


def default_max_memory() -> int:
    return int(psutil.virtual_memory().total * DEFAULT_RAM_SHARE)


def release_heap() -> None:
    """Hand the heap that freed objects left behind back to the OS (glibc's `malloc_trim`).

    glibc keeps freed memory for reuse: after training, the driver would carry the BPE trainer's
    hundreds of MB through every later step. A no-op where the C library has no `malloc_trim`.
    """
    _call_libc("malloc_trim", 0)


_M_ARENA_MAX = -8  # glibc mallopt parameter
# Enough malloc arenas for a driver's ~33 threads: Ray's core worker, tqdm, the RSS sampler, the trainer's.
MIN_MALLOC_ARENAS = 64


def raise_malloc_arena_limit() -> None:
    """Let every thread of this process have its own glibc malloc arena (the default caps them at 8 per
    core); call it first thing, before any thread exists: the cap is fixed once the ninth arena is made.

    At the cap, new threads share arenas and contend for their locks. With Ray's driver threads, the
    `tokenizers` trainer's threads shared theirs: on 2 cores (16 arenas, 33 threads) the BPE phase after
    counting took 36-39 s in 6 of 7 runs at 150 MB, against 27-29 s with the cap raised (12 CPU-s less).
    A no-op where the C library has no `mallopt`.
    """
    _call_libc("mallopt", _M_ARENA_MAX, max(MIN_MALLOC_ARENAS, 8 * (os.cpu_count() or 1)))


def _call_libc(name: str, *args: int) -> None:
    """Call the C library's `name`; a no-op where it has none (not glibc)."""
    try:
        getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)(*args)
    except (OSError, AttributeError):
        pass


def current_rss() -> int:
    return psutil.Process().memory_info().rss


def affordable_sample_bytes(max_memory: int) -> int:
    """The largest sample whose predicted peak stays within `max_memory` (0 when even none fits)."""
    return max(0, int((max_memory - DRIVER_ALLOWANCE_BYTES) / RSS_PER_SAMPLE_BYTE))


class PeakRSS:
    """Samples this process's RSS in a background thread; `peak` is the highest value seen."""

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-rss")

    def _run(self) -> None:
        proc = psutil.Process()
        while True:
            self.peak = max(self.peak, proc.memory_info().rss)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "PeakRSS":
        self.peak = current_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())
