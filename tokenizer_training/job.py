"""Train the tokenizer end to end: census -> plan (capped by memory) -> streamed sample -> BPE -> directory.

Used by `xdp train-tokenizer` and, through `train_tokenizer_from_config`, by `xdp run`.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Iterator, Optional

from mixing.ratios import load_ratios
from pipeline.config import Config, ConfigError, RayConfig, TokenizerConfig, validate_tokenizer
from pipeline.preflight import check_output_dir
from pipeline.ray_session import ray_session
from tokenizer_training.census import census_head_start
from tokenizer_training.memory import (DRIVER_ALLOWANCE_BYTES, PeakRSS, affordable_sample_bytes, current_rss,
                                       default_max_memory)
from tokenizer_training.sample_ray import run_census, stream_sample
from tokenizer_training.sampling import SKIPPED, SamplePlan, Tally, plan_sample, target_shares
from tokenizer_training.sources import list_input_files
from tokenizer_training.train import SPECIAL_TOKENS, VocabularyShortError, save_tokenizer_dir, train_bpe

log = logging.getLogger(__name__)


def _capped_sample_bytes(requested: int, max_memory: int) -> int:
    """The requested sample, or the largest whose predicted training peak fits `max_memory`: a function
    of the two settings alone, so a rerun trains on the same sample."""
    affordable = affordable_sample_bytes(max_memory)
    if affordable <= 0:
        raise ConfigError(f"tokenizer.max_memory: {max_memory:,} bytes leaves no room for a sample (the driver "
                          f"itself is allowed {DRIVER_ALLOWANCE_BYTES:,})")
    if affordable < requested:
        log.warning("memory guard: sample capped at %s bytes (asked %s) to stay within max_memory=%s",
                    f"{affordable:,}", f"{requested:,}", f"{max_memory:,}")
    return min(requested, affordable)


def _warn_short(plan: SamplePlan) -> None:
    """One warning listing every language with less text than its share asks (all of it is used)."""
    if not plan.short:
        return
    lines = [f"  {bucket}: {plan.available[bucket]:,} of the {plan.asked[bucket]:,} bytes its share "
             f"({100 * plan.shares[bucket]:.3f}%) asks" for bucket in plan.short]
    log.warning("%d language(s) have less text than their sampling share asks; all of their text is used:\n%s",
                len(plan.short), "\n".join(lines))


def _too_little_text(err: VocabularyShortError, plan: SamplePlan, sample: int, min_frequency: int) -> ConfigError:
    needed = err.bytes_needed(sample)
    if plan.exhausts_input:
        advice = (f"the whole input in the table's languages and code is only {sample:,} bytes: "
                  f"provide roughly {needed - sample:,} more bytes of input text")
    else:
        advice = f"the sample is {sample:,} bytes: provide roughly {needed - sample:,} more bytes (--sample-bytes)"
    return ConfigError(f"tokenizer: {err} at min_frequency={min_frequency}; {advice}, or lower --vocab-size")


def _by_language(plan: SamplePlan, sampled: Tally) -> dict:
    return {b: {"share": round(plan.shares[b], 6), "asked_bytes": plan.asked[b],
                "available_bytes": plan.available[b], "planned_bytes": plan.planned[b],
                "bytes": sampled.bytes.get(b, 0), "docs": sampled.docs.get(b, 0), "short": b in plan.short}
            for b in sorted(plan.shares)}


def train_tokenizer(inputs: list[str] | str, output_dir: str, tok_cfg: TokenizerConfig,
                    ray_cfg: Optional[RayConfig] = None, show_progress: bool = True) -> dict:
    """Train and write the tokenizer directory; returns the training report."""
    validate_tokenizer(tok_cfg)
    check_output_dir(output_dir, "--output", reads=[("--input", path) for path in
                                                    ([inputs] if isinstance(inputs, str) else inputs)])
    ratios = load_ratios(tok_cfg.ratios)
    files = list_input_files(inputs)
    languages = frozenset(ratios.languages)
    shares = target_shares(ratios, tok_cfg.temperature)
    max_memory = tok_cfg.max_memory or default_max_memory()
    sample_bytes = _capped_sample_bytes(tok_cfg.sample_bytes, max_memory)  # before Ray starts
    started = time.perf_counter()
    # The driver censuses the input while a local Ray starts, leaving one core to Ray's daemons: on 2
    # cores, the first sampled block came at 3.0-3.2 s with one thread, 3.4-4.3 s with two, 3.9-5.2 s
    # with none. A Ray that is already running takes over at once.
    head_threads = max(1, ((ray_cfg.num_cpus if ray_cfg else None) or os.cpu_count() or 2) - 1)
    with PeakRSS() as peak, census_head_start(files, languages, head_threads) as head_start, \
            ray_session(ray_cfg, reads=files[:1]) as session:
        census = run_census(files, languages, head_start)
        census_s = time.perf_counter() - started
        driver_rss = current_rss()
        if driver_rss > DRIVER_ALLOWANCE_BYTES:
            log.warning("the driver already holds %.0f MiB, more than the %.0f MiB set aside for it: training may "
                        "peak above max_memory", driver_rss / 2**20, DRIVER_ALLOWANCE_BYTES / 2**20)
        available = {b: census.buckets.bytes.get(b, 0) for b in shares}
        plan = plan_sample(shares, available, sample_bytes, tok_cfg.seed)
        if plan.planned_bytes == 0:
            raise ConfigError(f"--input: no text in the table's languages or code among {len(files)} file(s)")
        _warn_short(plan)
        log.info("sampling %s of %s bytes from %d file(s)", f"{plan.planned_bytes:,}",
                 f"{sum(available.values()):,}", len(files))
        by_bucket, by_category = Tally(), Tally()
        sampled_at: list[float] = []

        def sample() -> Iterator[list[str]]:  # after the last block, the merges need the driver alone
            yield from stream_sample(files, plan, languages, by_bucket, by_category)
            sampled_at.append(time.perf_counter())
            session.release()

        try:
            tok = train_bpe(sample(), tok_cfg.vocab_size, tok_cfg.min_frequency, show_progress=show_progress)
        except VocabularyShortError as err:
            raise _too_little_text(err, plan, sum(by_bucket.bytes.values()), tok_cfg.min_frequency) from None
    ended = time.perf_counter()
    total_s = ended - started
    skipped = census.buckets.to_dict().get(SKIPPED, {"docs": 0, "bytes": 0})
    docs_in, docs_sampled = sum(census.buckets.docs.values()), sum(by_bucket.docs.values())
    report = {
        "model": "byte-level BPE",
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
        "seed": tok_cfg.seed,
        "temperature": tok_cfg.temperature,
        "min_frequency": tok_cfg.min_frequency,
        "ratios": ratios.name,
        # records read = docs + bad_records; docs = sampled + not sampled + skipped_other_languages
        "input": {"files": len(files), "hash": census.input_hash, "docs": docs_in, "bad_records": census.bad_records,
                  "skipped_other_languages": skipped},
        "sample": {
            "requested_bytes": tok_cfg.sample_bytes,
            "capped_bytes": sample_bytes,
            "memory_capped": sample_bytes < tok_cfg.sample_bytes,
            "bytes": sum(by_bucket.bytes.values()),
            "docs": docs_sampled,
            "docs_not_sampled": docs_in - skipped["docs"] - docs_sampled,
            "short_languages": plan.short,
            "by_language": _by_language(plan, by_bucket),
            "by_category": by_category.to_dict(),
        },
        "time_s": {"census": round(census_s, 2), "sample_and_count": round(sampled_at[0] - started - census_s, 2),
                   "merges": round(ended - sampled_at[0], 2), "total": round(total_s, 2)},
        "peak_rss_bytes": peak.peak,
        "max_memory_bytes": max_memory,
    }
    report = save_tokenizer_dir(output_dir, tok, report, model_max_length=ratios.sequence_length)
    log.info("tokenizer with %s tokens written to %s in %.1f s (peak RSS %.0f MiB)",
             f"{report['vocab_size']:,}", output_dir, total_s, peak.peak / 2**20)
    return report


def train_tokenizer_from_config(cfg: Config, input_dir: str, output_dir: str) -> dict:
    """The `xdp run` stage: train on the cleaned Parquet in `input_dir` with `cfg.tokenizer` and `cfg.ray`."""
    return train_tokenizer(input_dir, output_dir, cfg.tokenizer, cfg.ray)
