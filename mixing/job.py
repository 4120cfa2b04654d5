"""The mixing job on Ray: tokenize once, plan from exact counts, select, order, pack, write.

1. Ray Data reads the cleaned Parquet and tokenizes it (`tokenize_batch`, EOS after every document) into a
   temporary token cache next to the output, so tokenization happens once.
2. Ray reduces the small per-document columns of the cache (bucket, tokens, hash, tie) to per-bucket sums
   and epoch-hash histograms; the driver plans the mix (`plan_mix`) and each bucket's selection from
   those and the few documents where the cut falls (`plan_on_ray`): exact counts, exact shares, and
   driver memory that does not grow with the corpus.
3. Ray Data expands the selected copies with their order key and sorts by it: a global, seeded shuffle
   across buckets that does not depend on the number of workers.
4. The driver streams the sorted documents through the windowed best-fit `Packer` into `ShardWriter`.
Then the report is written and the cache removed.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from mixing.packing import Packer
from mixing.planner import MixPlan, plan_mix
from mixing.ratios import load_ratios
from mixing.select import (BINS, BucketSelection, epoch_hash, expand_batch, fraction_window, histogram,
                           selection_from_window, split_rate, whole_epochs)
from mixing.shards import ShardWriter
from mixing.stats import load_stage_stats, mix_stats
from mixing.tokenize import TOKENIZED_SCHEMA, TokenizerInfo, bucket_keys, has_text, tokenize_batch
from pipeline.aggregate import sum_by
from pipeline.config import Config, ConfigError, MixingConfig, RayConfig
from pipeline.preflight import parquet_metadata
from pipeline.ray_session import ray_session

log = logging.getLogger(__name__)

_TOKENIZE_BATCH = 256  # documents per encode_batch call
_EXPAND_BATCH = 1024  # documents per selection-expansion call (each becomes up to max_epochs copies)
_META_COLUMNS = ["category", "key", "n_tokens", "h", "tie"]


def _check_cleaned(cleaned_dir: str) -> int:
    """Fail in the driver, with the column's name, before any Ray work starts; returns the rows it holds."""
    import pyarrow.dataset as pds

    root = Path(cleaned_dir)
    # What Arrow and Ray Data read: every file not hidden by a leading "." or "_" in its path.
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    files = [f for f in files if not any(part.startswith((".", "_")) for part in f.parts)]
    if not any(f.suffix == ".parquet" for f in files):
        raise ConfigError(f"cleaned directory {cleaned_dir}: no Parquet files (run the clean job first)")
    stray = next((f for f in files if f.suffix != ".parquet"), None)
    if stray is not None:  # Arrow and Ray Data would fail on it with a traceback
        raise ConfigError(f"cleaned directory {cleaned_dir}: {stray} is not a Parquet file (a cleaned directory "
                          "holds only the clean job's output)")
    # From the footers, which also show a truncated file or null ids (a Ray task would fail on either,
    # minutes in, with a traceback).
    rows = 0
    for f in files:
        meta = parquet_metadata(root / f, f"cleaned directory {cleaned_dir}")
        rows += meta.num_rows
        null_ids = _null_ids(meta)
        if null_ids:
            raise ConfigError(f"cleaned directory {cleaned_dir}: {f} holds rows without an id ({null_ids:,}; "
                              "every cleaned document needs one, and the clean job gives each an id)")
    names = pds.dataset(cleaned_dir, format="parquet", partitioning="hive").schema.names
    missing = [c for c in ("id", "text", "category") if c not in names]
    if missing:
        raise ConfigError(f"cleaned directory {cleaned_dir}: no column {missing[0]!r} (have {', '.join(names)})")
    return rows


def _null_ids(meta) -> int:
    """Null ids by the row groups' statistics (0 where a writer kept none)."""
    if "id" not in meta.schema.names:
        return 0
    column = meta.schema.names.index("id")
    stats = (meta.row_group(i).column(column).statistics for i in range(meta.num_row_groups))
    return sum(s.null_count for s in stats if s is not None and s.has_null_count)


def check_inputs(cleaned_dir: str, tokenizer_dir: str) -> tuple[TokenizerInfo, int]:
    """The cleaned directory and the tokenizer, checked in the driver before Ray starts; and the number of
    cleaned rows (documents read), from the Parquet footers."""
    rows = _check_cleaned(cleaned_dir)
    return TokenizerInfo.load(tokenizer_dir), rows


def tokenized(cleaned_dir: str, tokenizer_dir: str, info: TokenizerInfo, seed: int):
    """Ray Dataset of tokenized cleaned documents (`mixing.tokenize.TOKENIZED_SCHEMA`)."""
    import ray

    return ray.data.read_parquet(cleaned_dir).map_batches(
        tokenize_batch, fn_kwargs={"tokenizer_dir": tokenizer_dir, "sha256": info.sha256, "seed": seed},
        batch_format="pyarrow", batch_size=_TOKENIZE_BATCH)


def document_counts(cleaned_dir: str, tokenizer_dir: str, seed: int, ray_cfg: Optional[RayConfig] = None) -> pa.Table:
    """Per-document (category, key, n_tokens, h, tie) without keeping the tokens (for plan and stats)."""
    info, _ = check_inputs(cleaned_dir, tokenizer_dir)
    with ray_session(ray_cfg, reads=[cleaned_dir, tokenizer_dir]):
        ds = tokenized(cleaned_dir, tokenizer_dir, info, seed).select_columns(_META_COLUMNS)
        return pa.concat_tables(ds.iter_batches(batch_format="pyarrow", batch_size=None))


def cleaned_counts(cleaned_dir: str, tokenizer_dir: Optional[str] = None,
                   ray_cfg: Optional[RayConfig] = None) -> tuple[pa.Table, str]:
    """Per-document (category, key, n) of a cleaned directory: tokens with a tokenizer, else characters."""
    if tokenizer_dir:
        meta = document_counts(cleaned_dir, tokenizer_dir, 0, ray_cfg)
        return meta.select(["category", "key"]).append_column("n", meta.column("n_tokens")), "tokens"
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    _check_cleaned(cleaned_dir)
    parts = []
    dataset = pds.dataset(cleaned_dir, format="parquet", partitioning="hive")
    wanted = ["category", "text"] + [c for c in ("lang", "code_lang") if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=wanted):
        batch = batch.filter(has_text(batch.column("text")))  # as the mix leaves them out
        # a missing lang or code_lang column reads as null, as the mix's tokenize step takes it
        columns = [batch.column(c).cast(pa.string()) if c in wanted else pa.nulls(batch.num_rows, pa.string())
                   for c in ("category", "lang", "code_lang")]
        cats, keys = bucket_keys(*columns)
        parts.append(pa.table({"category": cats, "key": keys,
                               "n": pc.utf8_length(batch.column("text")).cast(pa.int64())}))
    return pa.concat_tables(parts), "chars"


_HIST_SCHEMA = pa.schema([("category", pa.string()), ("key", pa.string()), ("bin", pa.int64()),
                          ("docs", pa.int64()), ("tokens", pa.int64())])
_WINDOW_SCHEMA = pa.schema([("category", pa.string()), ("key", pa.string()), ("eh", pa.uint64()),
                            ("tie", pa.uint64()), ("n_tokens", pa.int64())])


def _rows_by_bucket(batch: pa.Table, names: list[tuple[str, str]]) -> Iterator[tuple[int, np.ndarray]]:
    index = {name: i for i, name in enumerate(names)}
    which = np.fromiter((index.get(pair, -1) for pair in zip(batch.column("category").to_pylist(),
                                                              batch.column("key").to_pylist())),
                        dtype=np.int64, count=batch.num_rows)
    for i in np.unique(which[which >= 0]).tolist():
        yield i, np.flatnonzero(which == i)


def _by_bucket(batch: pa.Table, fulls: dict) -> Iterator[tuple[tuple[str, str], np.ndarray, np.ndarray, np.ndarray]]:
    """(bucket, epoch hashes, token counts, ties) for each bucket of `fulls` present in the batch."""
    names = list(fulls)
    h, n, tie = (batch.column(c).to_numpy() for c in ("h", "n_tokens", "tie"))
    for i, rows in _rows_by_bucket(batch, names):
        yield names[i], epoch_hash(h[rows], fulls[names[i]]), n[rows], tie[rows]


def _bucket_rows(schema: pa.Schema, name: tuple[str, str], *columns: np.ndarray) -> pa.Table:
    k = len(columns[0])
    return pa.table([pa.array([name[0]] * k, pa.string()), pa.array([name[1]] * k, pa.string()),
                     *(pa.array(c) for c in columns)], schema=schema)


def _histogram_batch(batch: pa.Table, fulls: dict) -> pa.Table:
    """Per bucket of the batch: documents and tokens per epoch-hash bin (only bins that hold any)."""
    parts = []
    for name, eh, n, _ in _by_bucket(batch, fulls):
        docs, tokens = histogram(eh, n)
        bins = np.flatnonzero(docs)
        parts.append(_bucket_rows(_HIST_SCHEMA, name, bins, docs[bins], tokens[bins]))
    return pa.concat_tables(parts) if parts else _HIST_SCHEMA.empty_table()


def _window_batch(batch: pa.Table, fulls: dict, windows: dict) -> pa.Table:
    """The documents inside their bucket's window: (epoch hash, tie, tokens), nothing else."""
    parts = []
    for name, eh, n, tie in _by_bucket(batch, fulls):
        inside = windows[name].contains(eh)
        parts.append(_bucket_rows(_WINDOW_SCHEMA, name, eh[inside], tie[inside], n[inside]))
    return pa.concat_tables(parts) if parts else _WINDOW_SCHEMA.empty_table()


def plan_on_ray(meta, cfg: MixingConfig) -> tuple[MixPlan, dict[tuple[str, str], BucketSelection]]:
    """Plan the mix and choose each bucket's documents from a Ray Dataset of `_META_COLUMNS`.

    Three passes over those small columns, each reduced on the workers: token and document sums per
    bucket, then an epoch-hash histogram of each bucket with a fractional epoch, then the documents
    of the window where its cut falls. The driver holds O(buckets x bins) numbers plus the windows,
    never a row per document, and the result equals `plan_selection` on the whole bucket.
    """
    sums = sum_by(meta, ["category", "key"], "n_tokens")
    available = {name: tokens for name, (_, tokens) in sums.items()}
    plan = plan_mix(available, load_ratios(cfg.ratios), total_tokens=cfg.total_tokens, max_epochs=cfg.max_epochs,
                    documents={name: docs for name, (docs, _) in sums.items()})
    selections, fulls, remainders = {}, {}, {}
    for b in plan.buckets:
        name = (b.category, b.key)
        full, remainder = split_rate(b.tokens, available[name])
        if remainder > 0:
            fulls[name], remainders[name] = full, remainder
        else:
            selections[name] = whole_epochs(full, available[name], sums[name][0])
    if not fulls:
        return plan, selections
    hist = {name: (np.zeros(BINS, np.int64), np.zeros(BINS, np.int64)) for name in fulls}
    for part in meta.map_batches(_histogram_batch, fn_kwargs={"fulls": fulls}, batch_format="pyarrow") \
            .iter_batches(batch_format="pyarrow", batch_size=None):
        for cat, key, b, docs, tokens in zip(*(part.column(c).to_numpy(zero_copy_only=False) for c in _HIST_SCHEMA.names)):
            hist[(cat, key)][0][b] += docs
            hist[(cat, key)][1][b] += tokens
    windows = {name: fraction_window(remainders[name], *hist[name]) for name in fulls}
    names = list(fulls)
    columns = ("eh", "tie", "n_tokens")
    found: dict = {name: tuple([] for _ in columns) for name in names}
    for part in meta.map_batches(_window_batch, fn_kwargs={"fulls": fulls, "windows": windows},
                                 batch_format="pyarrow").iter_batches(batch_format="pyarrow", batch_size=None):
        values = [part.column(c).to_numpy() for c in columns]
        for i, rows in _rows_by_bucket(part, names):
            for kept, v in zip(found[names[i]], values):
                kept.append(v[rows])
    for name in fulls:
        eh, tie, n = (np.concatenate(kept) if kept else np.zeros(0, dtype)
                      for kept, dtype in zip(found[name], (np.uint64, np.uint64, np.int64)))
        selections[name] = selection_from_window(fulls[name], available[name], sums[name][0], remainders[name],
                                                 windows[name], eh, tie, n)
    return plan, selections


def plan_cleaned(cleaned_dir: str, tokenizer_dir: str, cfg: Config) -> tuple[MixPlan, dict, int]:
    """`xdp plan`: tokenize (nothing is written) and plan; returns the plan, the selections and the
    number of cleaned rows read."""
    info, read = check_inputs(cleaned_dir, tokenizer_dir)
    with ray_session(cfg.ray, reads=[cleaned_dir, tokenizer_dir]):
        meta = tokenized(cleaned_dir, tokenizer_dir, info, cfg.mixing.seed).select_columns(_META_COLUMNS).materialize()
        return (*plan_on_ray(meta, cfg.mixing), read)


def _pack_and_write(ordered, cfg: MixingConfig, info: TokenizerInfo, shard_dir: Path, manifest: dict) -> dict:
    from tqdm import tqdm

    packer = Packer(cfg.sequence_length, window_sequences=cfg.pack_window_sequences, seed=cfg.seed)
    writer = ShardWriter(shard_dir, cfg.sequence_length, pad_id=info.pad_id,
                         sequences_per_shard=cfg.sequences_per_shard, vocab_size=info.vocab_size)
    with tqdm(desc="packing", unit="doc", total=manifest["documents"]) as bar:
        for batch in ordered:
            tokens = batch.column("tokens").combine_chunks()
            offsets, values = tokens.offsets.to_numpy(), tokens.values.to_numpy()
            contents = batch.column("content").to_pylist()  # the text's hash: copies share it
            for i in range(len(tokens)):
                for seq in packer.add(values[offsets[i]:offsets[i + 1]], group=contents[i]):
                    writer.add(seq.tokens, seq.cu_seqlens)
            bar.update(len(tokens))
        for seq in packer.flush():
            writer.add(seq.tokens, seq.cu_seqlens)
    manifest["stats"]["packing"] = {**packer.stats.to_dict(), "sequence_length": cfg.sequence_length}
    return writer.close(**manifest)


def _cache_is_current(cache: Path) -> bool:
    """Whether a completed token cache has today's columns (one written before an upgrade may not)."""
    import pyarrow.dataset as pds

    return pds.dataset(str(cache), format="parquet").schema.names == TOKENIZED_SCHEMA.names


def mix_from_config(cfg: Config, cleaned_dir: str, tokenizer_dir: str, out_dir: str,
                    fingerprint: Optional[str] = None) -> dict:
    """Write `out_dir/shards/` (+ manifest) and `out_dir/report/`; returns a summary for `xdp run`.

    With a `fingerprint` (from `JobState`), the token cache of a killed run with the same fingerprint
    is reused instead of tokenizing again.
    """
    from mixing.report import write_report
    from pipeline.job_state import WorkDir, job_config

    mcfg = cfg.mixing
    info, read = check_inputs(cleaned_dir, tokenizer_dir)
    out = Path(out_dir)
    scratch = WorkDir(out / "_work" / "mix", fingerprint)
    cache = scratch.path("tokens")
    with ray_session(cfg.ray, writes=str(out), reads=[cleaned_dir, tokenizer_dir]):
        import ray

        if scratch.completed("tokens") and _cache_is_current(cache):
            log.info("reusing the token cache of an interrupted run of this job")
        else:
            log.info("tokenizing %s", cleaned_dir)
            tokenized(cleaned_dir, tokenizer_dir, info, mcfg.seed).write_parquet(str(scratch.fresh("tokens")))
            scratch.complete("tokens")
        meta = ray.data.read_parquet(str(cache), columns=_META_COLUMNS).materialize()
        try:
            plan, selections = plan_on_ray(meta, mcfg)
        except ConfigError:  # the data cannot meet this config: a rerun of it has nothing to resume
            shutil.rmtree(scratch.root, ignore_errors=True)
            raise
        log.info("plan: %d tokens from %d buckets (%s budget)", plan.total_tokens, len(plan.buckets),
                 plan.budget_rule)
        ordered = (ray.data.read_parquet(str(cache))
                   # bounded batches: a worker never holds a whole cache block repeated max_epochs times
                   .map_batches(expand_batch, fn_kwargs={"selections": selections}, batch_format="pyarrow",
                                batch_size=_EXPAND_BATCH)
                   .sort(["key", "content"])
                   .iter_batches(batch_format="pyarrow", batch_size=1024))
        manifest = {
            "eos_id": info.eos_id, "tokenizer_sha256": info.sha256, "seed": mcfg.seed,
            # what shaped these bytes, without where they went or how Ray ran (see job_state.job_config)
            "config": job_config(cfg), "documents": sum(s.documents for s in selections.values()),
            "stats": mix_stats(plan, selections, {}, load_stage_stats(cleaned_dir), read),
        }
        manifest = _pack_and_write(ordered, mcfg, info, out / "shards", manifest)
    shutil.rmtree(scratch.root, ignore_errors=True)
    report = write_report(manifest["stats"], out / "report")
    packing = manifest["stats"]["packing"]
    return {"shards": str(out / "shards"), "report": report["html"], "sequences": manifest["sequences"],
            "tokens": manifest["tokens"], "efficiency": packing["efficiency"],
            "split_documents": packing["split_documents"]}


def default_dirs(cfg: Config, cleaned: Optional[str], tokenizer: Optional[str]) -> tuple[str, str]:
    """The cleaned and tokenizer directories of a job (under `cfg.output` unless given)."""
    return cleaned or os.path.join(cfg.output, "cleaned"), tokenizer or os.path.join(cfg.output, "tokenizer")
