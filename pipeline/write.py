"""Deterministic, atomic Parquet output.

Files are named by content partition and hash bucket, never by worker or block, and rows are sorted
before writing, so the same input gives the same bytes with any number of workers. Each file is
written to a temporary name and renamed into place: a killed writer never leaves a half file under
the final name.
"""
from __future__ import annotations

import json
import os
import tempfile
import zlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PARQUET_OPTIONS = dict(compression="zstd", row_group_size=8192, write_statistics=True)


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def bucket_of(key: str, buckets: int) -> int:
    """Stable bucket of a string key (crc32: same on every machine and Python process)."""
    return zlib.crc32(key.encode("utf-8")) % buckets if buckets > 1 else 0


def sort_rows(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys], null_placement="at_start"))
