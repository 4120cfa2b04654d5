"""The Ray layer: count the corpus per bucket, then stream the chosen documents to the trainer.

One Ray task per input file, so reading, decompression, JSON parsing and the keep/drop decision run on
the cluster; only the sampled text travels to the driver, block by block, while the trainer consumes it
(Ray Data's streaming executor applies backpressure, so the sample is never materialized whole).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from tokenizer_training.sampling import SamplePlan, Tally, census, select
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


def _census_files(batch: dict[str, np.ndarray], languages: frozenset[str]) -> dict[str, list]:
    out = {"path": [], "sha256": [], "tally": [], "bad_records": []}
    for path in batch["path"]:
        tally, counters = Tally(), {}
        for table in read_file(str(path), counters=counters):
            tally.merge(census(table, languages))
        out["path"].append(str(path))
        out["sha256"].append(_file_sha256(str(path)))
        out["tally"].append(json.dumps(tally.to_dict()))
        out["bad_records"].append(counters.get("bad_records", 0))
    return out


def _sample_files(batch: dict[str, np.ndarray], plan: SamplePlan, languages: frozenset[str]) -> Iterator[pa.Table]:
    for path in batch["path"]:
        for table in read_file(str(path)):
            picked = select(table, plan, languages)
            if picked.num_rows:
                yield picked


def _files_dataset(files: list[str]):
    import ray

    return ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))


def run_census(files: list[str], languages: frozenset[str]) -> Census:
    """Bytes and documents per bucket over all input files, one Ray task per file."""
    rows = (_files_dataset(files)
            .map_batches(_census_files, batch_size=1, batch_format="numpy", fn_kwargs={"languages": languages})
            .take_all())
    rows.sort(key=lambda r: r["path"])
    buckets = Tally()
    for row in rows:
        buckets.merge(Tally.from_dict(json.loads(row["tally"])))
    root = os.path.dirname(os.path.commonprefix([r["path"] for r in rows]))
    digest = hashlib.sha256()
    for row in rows:  # paths relative to the inputs' common folder, so a moved corpus hashes the same
        digest.update(f"{os.path.relpath(row['path'], root)}\0{row['sha256']}\n".encode())
    return Census(buckets=buckets, bad_records=sum(int(r["bad_records"]) for r in rows),
                  input_hash=digest.hexdigest())


def stream_sample(files: list[str], plan: SamplePlan, languages: frozenset[str],
                  by_bucket: Tally, by_category: Tally) -> Iterator[list[str]]:
    """Yield the sample as lists of texts, tallying it per bucket and per category as it passes."""
    ds = _files_dataset(files).map_batches(
        _sample_files, batch_size=1, batch_format="numpy", fn_kwargs={"plan": plan, "languages": languages})
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        texts = block.column("text").to_pylist()
        lengths = [len(t.encode("utf-8")) for t in texts]
        for bucket, category, n in zip(block.column("bucket").to_pylist(), block.column("category").to_pylist(),
                                       lengths):
            by_bucket.add(bucket, n)
            by_category.add(category or "(none)", n)
        yield texts
