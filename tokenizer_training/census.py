"""The census: bytes and documents per bucket in every input file, the counts the sample plan needs.

`census_file` is the per-file unit of work (plain, so Ray runs it as a task and the driver as a thread).
`CensusHeadStart` censuses files on the driver while a local Ray starts: `ray.init` spends 2-3 s mostly
waiting on its daemons, time in which the driver's idle cores can census the corpus (the 392 M-character
shared corpus: all 19 files before Ray was up, against 1.0-1.5 s of Ray tasks after).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import pyarrow as pa

from tokenizer_training.memory import release_heap
from tokenizer_training.sampling import Tally, census
from tokenizer_training.sources import read_file

_HASH_CHUNK = 1 << 20


@dataclass
class Census:
    buckets: Tally  # per bucket, plus SKIPPED for text outside the table's languages
    bad_records: int
    input_hash: str  # sha256 over (relative path, file sha256) of every input file


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def census_file(path: str, languages: frozenset[str], abandon: Optional[threading.Event] = None) -> Optional[dict]:
    """One file's tally, bad-record count and sha256 (a few hundred bytes); None if `abandon` was set."""
    tally, counters = Tally(), {}
    for table in read_file(path, counters=counters):
        if abandon is not None and abandon.is_set():
            return None
        tally.merge(census(table, languages))
    return {"path": path, "sha256": _file_sha256(path), "tally": tally.to_dict(),
            "bad_records": counters.get("bad_records", 0)}


def largest_first(files: list[str]) -> list[str]:
    """Largest files first, so the last unit of work to finish is a small one."""
    return sorted(files, key=lambda f: (-os.path.getsize(f), f))


def summarize(rows: list[dict]) -> Census:
    """Merge the per-file rows (in any order) into the census of the whole input."""
    rows = sorted(rows, key=lambda r: r["path"])
    buckets = Tally()
    for row in rows:
        buckets.merge(Tally.from_dict(row["tally"]))
    root = os.path.dirname(os.path.commonprefix([r["path"] for r in rows]))
    digest = hashlib.sha256()
    for row in rows:  # paths relative to the inputs' common folder, so a moved corpus hashes the same
        digest.update(f"{os.path.relpath(row['path'], root)}\0{row['sha256']}\n".encode())
    return Census(buckets=buckets, bad_records=sum(int(r["bad_records"]) for r in rows),
                  input_hash=digest.hexdigest())


class CensusHeadStart:
    """Driver threads that census files, largest first, until `hand_over` gives the rest to the cluster.

    A file a thread has started is finished there (`results` waits for it) unless `close` abandons it.
    """

    def __init__(self, files: list[str], languages: frozenset[str], threads: int):
        self._languages = languages
        self._queue = list(reversed(largest_first(files)))  # pop() takes the largest
        self._lock = threading.Lock()
        self._rows: list[dict] = []
        self._errors: list[BaseException] = []
        self._abandon = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"census-{i}", daemon=True)
                         for i in range(max(0, min(threads, len(files))))]
        for thread in self._threads:
            thread.start()

    def _take(self) -> Optional[str]:
        with self._lock:
            return self._queue.pop() if self._queue and not self._errors else None

    def _work(self) -> None:
        while (path := self._take()) is not None:
            try:
                row = census_file(path, self._languages, self._abandon)
            except BaseException as err:  # re-raised by `results`, on the caller's thread
                with self._lock:
                    self._errors.append(err)
                return
            if row is not None:
                with self._lock:
                    self._rows.append(row)

    def hand_over(self) -> list[str]:
        """Stop taking files; the files no thread has started, largest first."""
        with self._lock:
            rest, self._queue = self._queue[::-1], []
        return rest

    def results(self) -> list[dict]:
        """The rows of every file the threads took, once they are done; a file's error is raised here.

        The memory the reads left in Arrow's pool and the C heap is handed back: the trainer that runs
        next in this process needs it (the shared corpus: 243 MiB -> 144 MiB of driver RSS).
        """
        for thread in self._threads:
            thread.join()
        if self._threads:
            pa.default_memory_pool().release_unused()
            release_heap()
        if self._errors:
            raise self._errors[0]
        return list(self._rows)

    def close(self) -> None:
        """Abandon the work in progress (on an error elsewhere) and wait for the threads to stop."""
        self._abandon.set()
        self.hand_over()
        for thread in self._threads:
            thread.join()


@contextlib.contextmanager
def census_head_start(files: list[str], languages: frozenset[str], threads: int) -> Iterator[CensusHeadStart]:
    head_start = CensusHeadStart(files, languages, threads)
    try:
        yield head_start
    finally:
        head_start.close()
