"""Deterministic, atomic output: every file xdp writes goes through `atomic_path`.

Files are named by content partition and hash bucket, never by worker or block, and rows are sorted
before writing, so the same input gives the same bytes with any number of workers. Each file is
written to a temporary name and renamed into place: a killed writer never leaves a half file under
the final name.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import zlib
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PARQUET_OPTIONS = dict(compression="zstd", row_group_size=8192, write_statistics=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name beside `path`; on success fsync it and rename it to `path`.

    The one way every xdp stage writes a file: a killed writer leaves a hidden temp file, never a
    half file under the final name.
    """
    path = os.fspath(path)
    if os.path.isdir(path):  # say so before the work whose result could not be renamed onto it
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike, **options) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **{**PARQUET_OPTIONS, **options})


def json_bytes(obj: Any) -> bytes:
    """Stable JSON: sorted keys, indented, UTF-8, newline-terminated (same object, same bytes)."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def bucket_of(key: str, buckets: int) -> int:
    """Stable bucket of a string key (crc32: same on every machine and Python process)."""
    return zlib.crc32(key.encode("utf-8")) % buckets if buckets > 1 else 0


def sort_rows(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys], null_placement="at_start"))


# --------------------------------------------------------------------------- file-based shuffle
# Rows are scattered by (partition, bucket) into fragment files, then each bucket's fragments are
# merged, sorted and written as one final file. Fragments are named by a digest of their rows, so a
# retried task overwrites its own fragments instead of adding a second copy.


def _fragment_name(table: pa.Table, sort_keys: list[str]) -> str:
    import hashlib

    h = hashlib.sha1()
    for key in sort_keys:
        for value in table.column(key).to_pylist():
            h.update(repr(value).encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.hexdigest()


def scatter_block(block: pa.Table, frag_dir: str, key: str, buckets, schema: pa.Schema,
                  sort_keys: list[str]) -> pa.Table:
    """Write one block's rows as fragments under frag_dir/<_part>/b<bucket>/; returns the row count.

    `buckets` is an int, or a dict mapping each `_part` value to its bucket count.
    """
    n = block.num_rows
    parts = block.column("_part").to_pylist() if "_part" in block.column_names else [""] * n
    keys = block.column(key).to_pylist()
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (part, k) in enumerate(zip(parts, keys)):
        count = buckets if isinstance(buckets, int) else buckets[part]
        groups.setdefault((part, bucket_of(str(k), count)), []).append(i)
    body = block.select(schema.names).cast(schema)
    for (part, bucket), rows in sorted(groups.items()):
        sub = body.take(pa.array(rows, pa.int64()))
        write_parquet_atomic(sub, os.path.join(frag_dir, part, f"b{bucket:05d}", _fragment_name(sub, sort_keys)
                                               + ".parquet"))
    return pa.table({"rows": [n]})


def merge_buckets(batch: pa.Table, frag_dir: str, out_dir: str, schema: pa.Schema,
                  sort_keys: list[str]) -> pa.Table:
    """For each bucket directory in `batch["dir"]`, merge its fragments into one sorted final file."""
    paths, docs = [], []
    for rel in batch.column("dir").to_pylist():
        src = os.path.join(frag_dir, rel)
        frags = sorted(f for f in os.listdir(src) if f.endswith(".parquet") and not f.startswith("."))
        table = pa.concat_tables([pq.read_table(os.path.join(src, f), schema=schema) for f in frags])
        part, bucket = os.path.split(rel)
        path = os.path.join(out_dir, part, f"part-{int(bucket[1:]):05d}.parquet")
        write_parquet_atomic(sort_rows(table, sort_keys), path)
        paths.append(path)
        docs.append(table.num_rows)
    return pa.table({"path": paths, "docs": pa.array(docs, pa.int64())})


def bucket_dirs(frag_dir: str) -> list[str]:
    """Relative paths of the bucket directories a scatter produced (names only: cheap on the driver)."""
    out = []
    for dirpath, dirnames, _ in os.walk(frag_dir):
        dirnames.sort()
        out.extend(os.path.relpath(os.path.join(dirpath, d), frag_dir) for d in dirnames if d.startswith("b")
                   and d[1:].isdigit())
    return sorted(out)
