"""The mixing job on Ray: tokenize once, plan from exact counts, select, order, pack, write.

1. Ray Data reads the cleaned Parquet and tokenizes it (`Tokenize`, EOS after every document) into a
   temporary token cache next to the output, so tokenization happens once.
2. The driver reads only the small per-document columns of the cache (bucket, tokens, hash), plans the
   mix (`plan_mix`) and the per-bucket selection (`plan_selection`): exact counts, exact shares.
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
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixing.packing import Packer
from mixing.planner import MixPlan, plan_mix
from mixing.ratios import load_ratios
from mixing.select import BucketSelection, expand_batch, plan_selection
from mixing.shards import ShardWriter
from mixing.stats import load_stage_stats, mix_stats
from mixing.tokenize import Tokenize, TokenizerInfo, bucket_keys
from pipeline.config import Config, ConfigError, MixingConfig, RayConfig
from pipeline.ray_session import ray_session

log = logging.getLogger(__name__)

_TOKENIZE_BATCH = 256  # documents per encode_batch call
_META_COLUMNS = ["category", "key", "n_tokens", "h"]


def _check_cleaned(cleaned_dir: str) -> None:
    """Fail in the driver, with the column's name, before any Ray work starts."""
    import pyarrow.dataset as pds

    if not Path(cleaned_dir).is_dir() or not any(Path(cleaned_dir).rglob("*.parquet")):
        raise ConfigError(f"cleaned directory {cleaned_dir}: no Parquet files (run the clean job first)")
    names = pds.dataset(cleaned_dir, format="parquet", partitioning="hive").schema.names
    missing = [c for c in ("id", "text", "category") if c not in names]
    if missing:
        raise ConfigError(f"cleaned directory {cleaned_dir}: no column {missing[0]!r} (have {', '.join(names)})")


def tokenized(cleaned_dir: str, tokenizer_dir: str, seed: int):
    """Ray Dataset of tokenized cleaned documents (`mixing.tokenize.TOKENIZED_SCHEMA`)."""
    import ray

    _check_cleaned(cleaned_dir)
    TokenizerInfo.load(tokenizer_dir)  # fail fast, before any worker starts
    workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ray.data.read_parquet(cleaned_dir).map_batches(
        Tokenize, fn_constructor_args=(tokenizer_dir, seed), batch_format="pyarrow",
        batch_size=_TOKENIZE_BATCH, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers), num_cpus=1,
        # one CPU per actor: keep the tokenizer's own thread pool from oversubscribing the node
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})


def document_counts(cleaned_dir: str, tokenizer_dir: str, seed: int, ray_cfg: Optional[RayConfig] = None) -> pa.Table:
    """Per-document (category, key, n_tokens, h) without keeping the tokens (for plan and stats)."""
    with ray_session(ray_cfg):
        ds = tokenized(cleaned_dir, tokenizer_dir, seed).select_columns(_META_COLUMNS)
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
    for batch in dataset.to_batches(columns=["category", "lang", "code_lang", "text"]):
        cats, keys = bucket_keys(*(batch.column(c).cast(pa.string()) for c in ("category", "lang", "code_lang")))
        parts.append(pa.table({"category": cats, "key": keys,
                               "n": pc.utf8_length(batch.column("text")).cast(pa.int64())}))
    return pa.concat_tables(parts), "chars"


def plan_from_counts(meta: pa.Table, cfg: MixingConfig) -> tuple[MixPlan, dict[tuple[str, str], BucketSelection]]:
    """Plan the mix from exact per-document counts and choose each bucket's documents."""
    h = meta.column("h").to_numpy()
    n = meta.column("n_tokens").to_numpy()
    pairs = list(zip(meta.column("category").to_pylist(), meta.column("key").to_pylist()))
    names = sorted(set(pairs))
    position = {name: i for i, name in enumerate(names)}
    inverse = np.fromiter((position[p] for p in pairs), dtype=np.int64, count=len(pairs))
    order = np.argsort(inverse, kind="stable")  # documents grouped by bucket
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    rows = {name: order[bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}
    available = {name: int(n[r].sum()) for name, r in rows.items()}
    plan = plan_mix(available, load_ratios(cfg.ratios), total_tokens=cfg.total_tokens, max_epochs=cfg.max_epochs)
    selections = {}
    for b in plan.buckets:
        r = rows[(b.category, b.key)]
        selections[(b.category, b.key)] = plan_selection(b.tokens, h[r], n[r])
    return plan, selections


def _pack_and_write(ordered, cfg: MixingConfig, info: TokenizerInfo, shard_dir: Path, manifest: dict) -> dict:
    from tqdm import tqdm

    packer = Packer(cfg.sequence_length, window_sequences=cfg.pack_window_sequences, seed=cfg.seed)
    writer = ShardWriter(shard_dir, cfg.sequence_length, pad_id=info.pad_id,
                         sequences_per_shard=cfg.sequences_per_shard, vocab_size=info.vocab_size)
    with tqdm(desc="packing", unit="doc", total=manifest["documents"]) as bar:
        for batch in ordered:
            tokens = batch.column("tokens").combine_chunks()
            offsets, values = tokens.offsets.to_numpy(), tokens.values.to_numpy()
            for i in range(len(tokens)):
                for seq in packer.add(values[offsets[i]:offsets[i + 1]]):
                    writer.add(seq.tokens, seq.cu_seqlens)
            bar.update(len(tokens))
        for seq in packer.flush():
            writer.add(seq.tokens, seq.cu_seqlens)
    manifest["stats"]["packing"] = {**packer.stats.to_dict(), "sequence_length": cfg.sequence_length}
    return writer.close(**manifest)


def mix_from_config(cfg: Config, cleaned_dir: str, tokenizer_dir: str, out_dir: str) -> dict:
    """Write `out_dir/shards/` (+ manifest) and `out_dir/report/`; returns a summary for `xdp run`."""
    from mixing.report import write_report

    mcfg = cfg.mixing
    info = TokenizerInfo.load(tokenizer_dir)
    out = Path(out_dir)
    cache = out / ".mix-token-cache"
    shutil.rmtree(cache, ignore_errors=True)
    try:
        with ray_session(cfg.ray):
            log.info("tokenizing %s", cleaned_dir)
            tokenized(cleaned_dir, tokenizer_dir, mcfg.seed).write_parquet(str(cache))
            meta = pq.read_table(cache, columns=_META_COLUMNS)
            plan, selections = plan_from_counts(meta, mcfg)
            log.info("plan: %d tokens from %d buckets (%s budget)", plan.total_tokens, len(plan.buckets),
                     plan.budget_rule)
            import ray

            ordered = (ray.data.read_parquet(str(cache))
                       .map_batches(expand_batch, fn_kwargs={"selections": selections}, batch_format="pyarrow")
                       .sort(["key", "content"])
                       .iter_batches(batch_format="pyarrow", batch_size=1024))
            manifest = {
                "eos_id": info.eos_id, "tokenizer_sha256": info.sha256, "seed": mcfg.seed,
                "config": cfg.to_dict(), "documents": sum(s.documents for s in selections.values()),
                "stats": mix_stats(plan, selections, {}, load_stage_stats(cleaned_dir)),
            }
            manifest = _pack_and_write(ordered, mcfg, info, out / "shards", manifest)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    report = write_report(manifest["stats"], out / "report")
    packing = manifest["stats"]["packing"]
    return {"shards": str(out / "shards"), "report": report["html"], "sequences": manifest["sequences"],
            "tokens": manifest["tokens"], "efficiency": packing["efficiency"],
            "split_documents": packing["split_documents"]}


def default_dirs(cfg: Config, cleaned: Optional[str], tokenizer: Optional[str]) -> tuple[str, str]:
    """The cleaned and tokenizer directories of a job (under `cfg.output` unless given)."""
    return cleaned or os.path.join(cfg.output, "cleaned"), tokenizer or os.path.join(cfg.output, "tokenizer")
