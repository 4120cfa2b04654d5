"""Exact and MinHash dedup on Ray: the steps of `pipeline.dedup` wired through hash-partitioned files.

Every grouping goes through Parquet files under ``work_dir`` (shared storage), never through actor
state or the driver: one Ray Data pass writes each batch's rows into ``<step>/p=<partition>/`` pieces
named by their content (so a retried task rewrites the same files), then one Ray task per partition
reads its pieces and writes its result. The driver only sees counts and schemas.

Exact:  docs -> pieces by hash(text key) -> per partition: smallest id per key survives.
Near:   docs -> pieces by hash(id)  +  band rows -> pieces by hash(band key)
        -> per band partition: verified star edges, written both ways by hash(src)
        -> rounds until a whole round changes no label, each: min-label propagation (messages by
           hash(dst), labels by hash(node)), then hooking and pointer jumping (requests by
           hash(target), answers by hash(node)), so a chain of n near duplicates takes ~log2(n)
           rounds, not n; `dedup.max_iterations` is only a safety bound
        -> per id partition (docs and labels share the partitioning): kept / removed.
The partition count grows with the input (`dedup.partition_count`), so one partition task holds a
bounded share of it. Outputs are one file per partition, sorted by id: the same bytes for any block
count, worker count or input order.
"""
from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash

from pipeline import dedup
from pipeline.aggregate import sum_by
from pipeline.write import write_parquet_atomic
from pipeline.config import DedupConfig
from pipeline.minhash import MinHasher, has_words, lsh_params
from pipeline.ray_session import run_tasks

log = logging.getLogger(__name__)

_KEY = "_key"


# --------------------------------------------------------------------------- files


def _part_dir(root: Path, step: str, p: int) -> Path:
    return root / step / f"p={p:05d}"


def _write_pieces(table: pa.Table, parts: np.ndarray, root: Path, step: str, name: Optional[str] = None) -> None:
    """Split `table` by partition and write each non-empty piece as `<step>/p=<partition>/<name>.parquet`;
    without a name, by a hash of its ids, so a retried task overwrites its own pieces instead of adding more."""
    for p in np.unique(parts):
        piece = table.filter(pa.array(parts == p))
        stem = name or xxhash.xxh3_64_hexdigest("\0".join(piece.column("id").to_pylist()).encode("utf-8"))
        write_parquet_atomic(piece, _part_dir(root, step, int(p)) / f"{stem}.parquet")


def _send(table: pa.Table, by: str, root: Path, step: str, sender: Optional[int], num_partitions: int) -> None:
    """Partition `sender`'s rows for the next step, routed by hash of column `by`; pieces are named by
    the sender (by their ids for a Ray Data batch, which has no index), so a retried task rewrites its own."""
    _write_pieces(table, dedup.partition_of(table.column(by).combine_chunks(), num_partitions), root, step,
                  name=None if sender is None else f"from-{sender:05d}")


def _write_labels(labels: pa.Table, root: Path, step: str, q: int) -> None:
    write_parquet_atomic(labels, _part_dir(root, step, q) / "labels.parquet")


def _read_partition(root: Path, step: str, p: int, schema: pa.Schema) -> pa.Table:
    folder = _part_dir(root, step, p)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return schema.empty_table()
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="permissive").cast(schema)


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _check_columns(ds: ray.data.Dataset, stage: str) -> None:
    schema = ds.schema()
    names = schema.names if schema is not None else []
    missing = [c for c in ("id", "text") if c not in names]
    if missing:
        raise ValueError(f"{stage} dedup: input has no {', '.join(missing)} column (columns: {', '.join(names)})")
    if isinstance(schema.base_schema, pa.Schema):  # in the driver, not in a task
        dedup.check_id_type(schema.base_schema.field("id").type)


def _unified_schema(stats: list[dict]) -> pa.Schema:
    """The input schema as every batch saw it (a column null in one batch is typed by the others)."""
    schemas = {s["schema"] for s in stats}
    return pa.unify_schemas([pa.ipc.read_schema(pa.py_buffer(s)) for s in sorted(schemas)],
                            promote_options="permissive")


def _empty_schema(ds: ray.data.Dataset) -> pa.Schema:
    schema = ds.schema()
    return schema.base_schema if schema is not None else pa.schema([("id", pa.string()), ("text", pa.string())])


def _batch_stats(table: pa.Table) -> pa.Table:
    return pa.table({"rows": [table.num_rows], "schema": [table.schema.serialize().to_pybytes()]})


def _n_chars(batch: pa.Table) -> pa.Table:
    return pa.table({"n_chars": pc.utf8_length(batch.column("text")).cast(pa.int64())})


def partition_count(ds: ray.data.Dataset, cfg: DedupConfig) -> int:
    """Hash partitions for `ds` (see `dedup.partition_count`); reads only `n_chars` when it has one."""
    sized = (ds.select_columns(["n_chars"]) if "n_chars" in ds.columns()
             else ds.map_batches(_n_chars, batch_format="pyarrow"))
    docs, chars = sum_by(sized, [], "n_chars").get((), (0, 0))
    return dedup.partition_count(docs, chars, cfg.num_partitions, cfg.partition_chars, cfg.partition_docs)


def _read_result(folder: Path) -> ray.data.Dataset:
    return ray.data.read_parquet(str(folder), file_extensions=["parquet"], partitioning=None)


# --------------------------------------------------------------------------- exact


def _exact_map(batch: pa.Table, root: str, num_partitions: int) -> pa.Table:
    keys = dedup.exact_keys(batch.column("text").combine_chunks())
    table = batch.append_column(_KEY, keys)
    _write_pieces(table, dedup.partition_of(keys, num_partitions), Path(root), "docs")
    return _batch_stats(batch)


@ray.remote(num_cpus=1)
def _exact_partition(root: str, p: int, schema: pa.Schema) -> tuple[int, int]:
    root = Path(root)
    docs = _read_partition(root, "docs", p, schema.append(pa.field(_KEY, pa.binary())))
    kept, dups = dedup.exact_survivors(docs, _KEY)
    write_parquet_atomic(kept, root / "kept" / f"part-{p:05d}.parquet")
    write_parquet_atomic(dups, root / "duplicates" / f"part-{p:05d}.parquet")
    return kept.num_rows, dups.num_rows


def exact_dedup(ds: ray.data.Dataset, cfg: DedupConfig, work_dir: str,
                partitions: Optional[int] = None) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(kept documents with the input's columns, duplicates with `dedup.DUPLICATE_SCHEMA`):
    one survivor (the smallest id) per distinct text, across the whole dataset.
    `partitions`: the hash partition count, when the caller has sized the input already."""
    _check_columns(ds, "exact")
    root = _fresh_dir(Path(work_dir) / "exact")
    P = partitions or partition_count(ds, cfg)
    stats = ds.map_batches(_exact_map, fn_kwargs=dict(root=str(root), num_partitions=P),
                           batch_format="pyarrow").take_all()
    schema = _unified_schema(stats) if stats else _empty_schema(ds)
    counts = run_tasks(_exact_partition, [(str(root), p, schema) for p in range(P)], "exact dedup")
    shutil.rmtree(root / "docs", ignore_errors=True)
    log.info("exact dedup: %d documents, %d duplicates removed (%d partitions)",
             sum(k + d for k, d in counts), sum(d for _, d in counts), P)
    return _read_result(root / "kept"), _read_result(root / "duplicates")


# --------------------------------------------------------------------------- chained stages


def _route(batch: pa.Table, root: str, step: str, by: str, num_partitions: int) -> pa.Table:
    _send(batch, by, Path(root), step, None, num_partitions)
    return _batch_stats(batch)


@ray.remote(num_cpus=1)
def _resolve_partition(root: str, p: int) -> int:
    root = Path(root)
    resolved = dedup.through_later_removals(_read_partition(root, "earlier", p, dedup.DUPLICATE_SCHEMA),
                                            _read_partition(root, "later", p, dedup.DUPLICATE_SCHEMA))
    write_parquet_atomic(resolved.sort_by("id"), root / "resolved" / f"part-{p:05d}.parquet")
    return resolved.num_rows


def through_later_removals(earlier: ray.data.Dataset, later: ray.data.Dataset, work_dir: str,
                           num_partitions: int) -> ray.data.Dataset:
    """`earlier`'s duplicates (exact) whose `duplicate_of` a `later` stage (near) removed, pointed at the
    survivor it kept instead (`dedup.through_later_removals`), joined per partition: `earlier` routed by
    hash(duplicate_of), `later` by hash(id)."""
    root = _fresh_dir(Path(work_dir) / "resolve")
    for ds, step, by in ((earlier, "earlier", "duplicate_of"), (later, "later", "id")):
        ds.map_batches(_route, fn_kwargs=dict(root=str(root), step=step, by=by, num_partitions=num_partitions),
                       batch_format="pyarrow").take_all()
    run_tasks(_resolve_partition, [(str(root), p) for p in range(num_partitions)], "dedup: survivors of survivors")
    for step in ("earlier", "later"):
        shutil.rmtree(root / step, ignore_errors=True)
    return _read_result(root / "resolved")


# --------------------------------------------------------------------------- near


@functools.lru_cache(maxsize=4)
def _hasher(num_perm: int, ngram: int, seed: int, char_ngram: int) -> MinHasher:
    return MinHasher(num_perm=num_perm, ngram=ngram, seed=seed, char_ngram=char_ngram)


def _near_map(batch: pa.Table, cfg: DedupConfig, bands: int, rows: int, root: str, P: int) -> pa.Table:
    root_path = Path(root)
    ids = batch.column("id").combine_chunks()
    _write_pieces(batch, dedup.partition_of(ids, P), root_path, "docs")
    langs = batch.column("lang").to_pylist() if "lang" in batch.column_names else None
    texts = batch.column("text").to_pylist()
    sigs = _hasher(cfg.num_perm, cfg.ngram, cfg.seed, cfg.char_ngram).signatures(texts, langs)
    worded = has_words(texts)  # the rest would all match each other; exact dedup has seen them
    table = dedup.band_table(ids.filter(pa.array(worded)), sigs[worded], bands, rows)
    parts = (table.column("band_key").to_numpy() % np.uint64(P)).astype(np.int64)  # already a hash
    _write_pieces(table, parts, root_path, "bands")
    return _batch_stats(batch)


def _band_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("band_key", pa.uint64()), ("id", pa.string()), ("sig", pa.list_(pa.uint32(), num_perm))])


@ray.remote(num_cpus=1)
def _near_edges(root: str, p: int, num_partitions: int, num_perm: int, threshold: float) -> int:
    """Verified star edges of band partition `p`, written in both directions by hash(src)."""
    root = Path(root)
    edges = dedup.bucket_edges(_read_partition(root, "bands", p, _band_schema(num_perm)), threshold)
    both = pa.concat_tables([edges, edges.select(["dst", "src"]).rename_columns(["src", "dst"])])
    _send(both, "src", root, "edges", p, num_partitions)
    return edges.num_rows


@ray.remote(num_cpus=1)
def _near_init_labels(root: str, q: int) -> int:
    root = Path(root)
    labels = dedup.initial_labels(_read_partition(root, "edges", q, dedup.EDGE_SCHEMA))
    _write_labels(labels, root, "labels-0", q)
    return labels.num_rows


@ray.remote(num_cpus=1)
def _near_messages(root: str, p: int, rnd: int, num_partitions: int) -> int:
    """Round `rnd`, sending side: labels of partition `p` that changed, along its edges, by hash(dst)."""
    root = Path(root)
    messages = dedup.label_messages(_read_partition(root, "edges", p, dedup.EDGE_SCHEMA),
                                    _read_partition(root, f"labels-{rnd}", p, dedup.LABEL_SCHEMA))
    _send(messages, "node", root, f"messages-{rnd}", p, num_partitions)
    return messages.num_rows


@ray.remote(num_cpus=1)
def _near_relabel(root: str, q: int, rnd: int, num_partitions: int) -> int:
    """Round `rnd`, receiving side: partition `q` takes the smallest labels sent, then asks for its hooks
    and jumps (requests by hash(target)); returns how many labels changed."""
    root = Path(root)
    before = _read_partition(root, f"labels-{rnd}", q, dedup.LABEL_SCHEMA)
    labels, changed = dedup.relabel(before, _read_partition(root, f"messages-{rnd}", q, dedup.MESSAGE_SCHEMA))
    _write_labels(labels, root, f"propagated-{rnd}", q)
    requests = dedup.jump_requests(before, labels)
    _send(requests, "target", root, f"requests-{rnd}", q, num_partitions)
    return changed


@ray.remote(num_cpus=1)
def _near_answer(root: str, p: int, rnd: int, num_partitions: int) -> int:
    """Round `rnd`, requested side: partition `p` hooks its nodes to the labels sent, then answers with their
    labels (by hash(asking node)); returns how many labels changed."""
    root = Path(root)
    requests = _read_partition(root, f"requests-{rnd}", p, dedup.REQUEST_SCHEMA)
    labels, changed = dedup.hook(_read_partition(root, f"propagated-{rnd}", p, dedup.LABEL_SCHEMA), requests)
    _write_labels(labels, root, f"hooked-{rnd}", p)
    answers = dedup.jump_answers(requests, labels)
    _send(answers, "node", root, f"answers-{rnd}", p, num_partitions)
    return changed


@ray.remote(num_cpus=1)
def _near_jump(root: str, q: int, rnd: int) -> int:
    """Round `rnd`, last step: partition `q` takes the smaller answers; returns how many labels changed."""
    root = Path(root)
    labels, changed = dedup.adopt_jumps(_read_partition(root, f"hooked-{rnd}", q, dedup.LABEL_SCHEMA),
                                        _read_partition(root, f"answers-{rnd}", q, dedup.MESSAGE_SCHEMA))
    _write_labels(labels, root, f"labels-{rnd + 1}", q)
    return changed


@ray.remote(num_cpus=1)
def _near_split(root: str, p: int, rnd: int, schema: pa.Schema) -> tuple[int, int]:
    root = Path(root)
    kept, dups = dedup.split_duplicates(_read_partition(root, "docs", p, schema),
                                        _read_partition(root, f"labels-{rnd}", p, dedup.LABEL_SCHEMA))
    write_parquet_atomic(kept, root / "kept" / f"part-{p:05d}.parquet")
    write_parquet_atomic(dups, root / "duplicates" / f"part-{p:05d}.parquet")
    return kept.num_rows, dups.num_rows


def _propagate_labels(root: Path, P: int, max_iterations: int) -> int:
    """Rounds of min-label propagation, hooking and pointer jumping until a whole round changes no label;
    returns the round whose labels are final."""
    run_tasks(_near_init_labels, [(str(root), q) for q in range(P)], "near dedup: labels")
    for rnd in range(max_iterations):
        args = [(str(root), p, rnd, P) for p in range(P)]
        run_tasks(_near_messages, args, f"near dedup: round {rnd + 1} send")
        changed = sum(run_tasks(_near_relabel, args, f"near dedup: round {rnd + 1} receive"))
        changed += sum(run_tasks(_near_answer, args, f"near dedup: round {rnd + 1} answer"))
        changed += sum(run_tasks(_near_jump, [(str(root), q, rnd) for q in range(P)],
                                 f"near dedup: round {rnd + 1} jump"))
        for step in ("messages", "labels", "propagated", "requests", "hooked", "answers"):
            shutil.rmtree(root / f"{step}-{rnd}", ignore_errors=True)
        log.info("near dedup: round %d, %d labels changed", rnd + 1, changed)
        if changed == 0:
            return rnd + 1
    raise RuntimeError(
        f"near dedup: connected components did not converge in {max_iterations} rounds (dedup.max_iterations, "
        f"a safety bound: with hooking and pointer jumping, rounds grow as ~log2 of the longest chain of near "
        f"duplicates); raise it")


def near_dedup(ds: ray.data.Dataset, cfg: DedupConfig, work_dir: str,
               partitions: Optional[int] = None) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(kept documents with the input's columns, duplicates with `dedup.DUPLICATE_SCHEMA`): one survivor
    (the smallest id) per connected component of MinHash-LSH candidates verified at `cfg.threshold`.
    `partitions`: the hash partition count, when the caller has sized the input already."""
    _check_columns(ds, "near")
    root = _fresh_dir(Path(work_dir) / "near")
    P = partitions or partition_count(ds, cfg)
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    stats = ds.map_batches(_near_map, fn_kwargs=dict(cfg=cfg, bands=bands, rows=rows, root=str(root), P=P),
                           batch_format="pyarrow").take_all()
    schema = _unified_schema(stats) if stats else _empty_schema(ds)
    edges = sum(run_tasks(_near_edges, [(str(root), p, P, cfg.num_perm, cfg.threshold) for p in range(P)],
                          "near dedup: band buckets"))
    final = _propagate_labels(root, P, cfg.max_iterations)
    counts = run_tasks(_near_split, [(str(root), p, final, schema) for p in range(P)], "near dedup: split")
    for step in ("docs", "bands", "edges", f"labels-{final}"):
        shutil.rmtree(root / step, ignore_errors=True)
    log.info("near dedup: %d bands x %d rows, %d candidate edges, %d documents, %d duplicates removed "
             "(%d partitions)", bands, rows, edges, sum(k + d for k, d in counts), sum(d for _, d in counts), P)
    return _read_result(root / "kept"), _read_result(root / "duplicates")
