"""The clean job on Ray Data: read+validate+normalize -> language ID -> exact dedup -> MinHash dedup -> write.

The only module of the cleaning pipeline that knows about Ray. Stage logic lives in plain modules
(`read`, `normalize`, `langid`, `dedup`, `accounting`); here they become Ray Data operations.
Intermediate results are materialized as Parquet under `<output>/_work/` (never gathered on the
driver); final outputs are grouped by content partition and hash bucket, sorted, and written
atomically, so 1, 2 or N workers give the same bytes. Output layout:

    <output>/cleaned/category=<c>/lang=<l>/part-00000.parquet   documents kept
    <output>/quarantine/part-00000.parquet                        bad records (file, position, reason, raw)
    <output>/duplicates/part-00000.parquet                        id, source, position, stage, and the same
                                                                  three of the survivor (duplicate_of, ...)
    <output>/stats.json                                           per-stage accounting
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import accounting
from pipeline.aggregate import sum_by
from pipeline.config import Config
from pipeline.job_state import WorkDir, job_config, update_timings
from pipeline.ray_session import cluster_cpus, ray_session
from pipeline.read import read_file
from pipeline.schema import READ_SCHEMA, CLEANED_SCHEMA, DOC_COLUMNS, DUPLICATES_SCHEMA, NULL_PARTITION, QUARANTINE_SCHEMA
from pipeline.sources import InputFile, first_local_files, list_input_files
from pipeline.write import bucket_dirs, merge_buckets, scatter_block, write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

ROWS_PER_SMALL_FILE = 1_000_000  # quarantine / duplicates rows per output file
MERGE_TASKS_PER_CPU = 4  # bucket merges are uneven: a few tasks per CPU keep every CPU busy


# --------------------------------------------------------------------------- per-batch functions


def _read_files(batch: pa.Table, files: list[InputFile], cfg: Config) -> Iterator[pa.Table]:
    for index in batch.column("file_index").to_pylist():
        f = files[index]
        yield from read_file(f, cfg.inputs[f.spec_index], cfg.read)


def _valid_docs(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column("reason"))).select(DOC_COLUMNS)


def _valid_count(batch: pa.Table) -> pa.Table:
    return pa.table({"valid": [batch.column("reason").null_count]})


def _quarantined(batch: pa.Table) -> pa.Table:
    bad = batch.filter(pc.is_valid(batch.column("reason")))
    return pa.table({
        "source_file": bad.column("source"), "position": bad.column("position"), "reason": bad.column("reason"),
        "raw": bad.column("raw"), "category": bad.column("category"), "n_chars": bad.column("n_chars"),
    }, schema=QUARANTINE_SCHEMA)


# Input ids need not be unique (two sources both numbering from 0). Dedup keys its graph by id, so
# during dedup a document's id is extended by its (source, position), unique per record read; the
# separator sorts below every printable character, so "smallest id survives" keeps its meaning.
_ID_SEP = "\x1f"


def _unique_ids(batch: pa.Table) -> pa.Table:
    ids = [f"{i}{_ID_SEP}{s}{_ID_SEP}{p:012d}" for i, s, p in zip(
        batch.column("id").to_pylist(), batch.column("source").to_pylist(), batch.column("position").to_pylist())]
    return batch.set_column(batch.column_names.index("id"), "id", pa.array(ids, pa.string()))


def _input_ids(batch: pa.Table) -> pa.Table:
    values = [v.rsplit(_ID_SEP, 2)[0] for v in batch.column("id").to_pylist()]
    return batch.set_column(batch.column_names.index("id"), "id", pa.array(values, pa.string()))


def _traceable_duplicates(batch: pa.Table) -> pa.Table:
    """Duplicates with the input's ids, and where each side was read (`source`, `position`): with
    ids reused across sources, `0 duplicate_of 0` alone would name neither document."""
    for name, prefix in (("id", ""), ("duplicate_of", "duplicate_of_")):
        parts = [v.rsplit(_ID_SEP, 2) for v in batch.column(name).to_pylist()]
        batch = batch.set_column(batch.column_names.index(name), name, pa.array([p[0] for p in parts], pa.string()))
        batch = batch.append_column(f"{prefix}source", pa.array([p[1] for p in parts], pa.string()))
        batch = batch.append_column(f"{prefix}position", pa.array([int(p[2]) for p in parts], pa.int64()))
    return batch


def _partition_path(category: str, lang) -> str:
    return f"category={category}/lang={lang if lang is not None else NULL_PARTITION}"


def _with_part(batch: pa.Table) -> pa.Table:
    parts = [_partition_path(c, l) for c, l in zip(batch.column("category").to_pylist(),
                                                   batch.column("lang").to_pylist())]
    return batch.append_column("_part", pa.array(parts, pa.string()))


def _fates(batch: pa.Table, stage: str) -> pa.Table:
    """Reduce rows to (category, lang, stage, reason, n_chars) for the accounting group-by."""
    n = batch.num_rows
    cats = batch.column("category") if "category" in batch.column_names else pa.nulls(n, pa.string())
    cats = pc.fill_null(cats.cast(pa.string()), accounting.UNKNOWN)
    if stage in ("read", "normalize"):
        langs = pa.array([accounting.UNKNOWN] * n, pa.string())
        reasons = batch.column("reason")
        stages = pa.array(["normalize" if r.startswith("empty_after_normalize") else "read"
                           for r in reasons.to_pylist()], pa.string())
    else:
        langs = pc.fill_null(batch.column("lang").cast(pa.string()), accounting.CODE)
        reasons = batch.column("stage") if stage != accounting.KEPT else pa.array([""] * n, pa.string())
        if stage != accounting.KEPT:
            reasons = pa.array(["exact_duplicate" if s == "exact" else "near_duplicate"
                                for s in reasons.to_pylist()], pa.string())
            stages = pa.array(["exact_dedup" if r == "exact_duplicate" else "near_dedup"
                               for r in reasons.to_pylist()], pa.string())
        else:
            stages = pa.array([accounting.KEPT] * n, pa.string())
    return pa.table({"category": cats, "lang": langs, "stage": stages, "reason": reasons,
                     "n_chars": pc.fill_null(batch.column("n_chars"), 0)})


# --------------------------------------------------------------------------- the job


class CleanJob:
    """Runs stages 1-6 for one config. `run()` returns the stats dict also written to stats.json.

    With a `fingerprint` (from `JobState`), the read and language-ID results of a killed run with the
    same fingerprint are reused; without one, every run starts from scratch.
    """

    def __init__(self, cfg: Config, fingerprint: str | None = None):
        self.cfg = cfg
        self.files = list_input_files(cfg)  # on the driver, before Ray: fail fast on empty inputs
        self.out = Path(cfg.output).resolve()
        self.fingerprint = fingerprint
        self.work = self.out / "_work" / "clean"
        self.final = self.work / "final"
        self.timings: dict[str, float] = {}

    def _timed(self, name: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.timings[name] = round(time.perf_counter() - start, 3)
        log.info("%s done in %.1fs", name, self.timings[name])
        return result

    def run(self) -> dict:
        import ray

        self.scratch = WorkDir(self.work, self.fingerprint)
        shutil.rmtree(self.final, ignore_errors=True)
        with ray_session(self.cfg.ray, writes=self.cfg.output, reads=first_local_files(self.files)):
            staged = self._timed("read", self._resumable, "read", self._read)
            kept, dup_sets = None, []
            reasons = ray.data.read_parquet(str(self.scratch.path("read")), partitioning=None, columns=["reason"])
            # sum_by, not Dataset.sum: Ray's aggregate starts shuffle actors, ~5 s on a small node
            _, valid = sum_by(reasons.map_batches(_valid_count, batch_format="pyarrow"), [], "valid").get((), (0, 0))
            if valid:
                labelled = self._timed("langid", self._resumable, "labelled", self._langid, staged)
                kept, dup_sets = self._timed("dedup", self._dedup, labelled)
            written = self._timed("write", self._write, staged, kept, dup_sets)
            stats = self._timed("stats", self._stats, written)
        self._publish()
        write_json_atomic(stats, str(self.out / "stats.json"))
        # Timings vary run to run, so they live beside stats.json, which must be byte-identical.
        update_timings(self.out, "clean", self.timings)
        if not self.cfg.write.keep_work_dir:
            shutil.rmtree(self.out / "_work" / "clean", ignore_errors=True)
        return stats

    # -- stages

    def _resumable(self, name: str, write, *args):
        """Materialize `write(dir, *args)` into `_work/clean/<name>` once per fingerprint; read it back."""
        import ray

        path = self.scratch.path(name)
        if self.scratch.completed(name):
            log.info("%s: reusing the result of an interrupted run of this job", name)
        else:
            write(self.scratch.fresh(name), *args)
            self.scratch.complete(name)
        return ray.data.read_parquet(str(path), partitioning=None)

    def _read(self, out: Path) -> None:
        import ray

        files = self.files
        items = [{"file_index": f.index} for f in files]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(_read_files, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"files": files, "cfg": self.cfg})
        ds.write_parquet(str(out))
        if not any(out.glob("*.parquet")):  # no records at all: keep the schema
            write_parquet_atomic(READ_SCHEMA.empty_table(), str(out / "empty.parquet"))

    def _langid(self, out: Path, staged) -> None:
        from pipeline.langid import label_batch

        labelled = staged.map_batches(_valid_docs, batch_format="pyarrow").map_batches(
            label_batch, fn_kwargs={"model_path": self.cfg.langid.model, "threshold": self.cfg.langid.threshold,
                                    "rules": self.cfg.langid.rules},
            batch_size=self.cfg.langid.batch_size, batch_format="pyarrow")
        labelled.write_parquet(str(out))

    def _dedup(self, labelled):
        from pipeline.dedup_ray import exact_dedup, near_dedup, partition_count, through_later_removals

        dups = []
        partitions = partition_count(labelled, self.cfg.dedup)  # sized once, from the n_chars column
        kept = labelled.map_batches(_unique_ids, batch_format="pyarrow")
        if self.cfg.dedup.exact:
            kept, d = exact_dedup(kept, self.cfg.dedup, str(self.work / "exact"), partitions)
            dups.append(d)
        if self.cfg.dedup.near:
            kept, d = near_dedup(kept, self.cfg.dedup, str(self.work / "near"), partitions)
            if dups:  # exact duplicates of a copy near dedup then removed: point them at its survivor
                dups[0] = through_later_removals(dups[0], d, str(self.work / "near"), partitions)
            dups.append(d)
        return (kept.map_batches(_input_ids, batch_format="pyarrow"),
                [d.map_batches(_traceable_duplicates, batch_format="pyarrow") for d in dups])

    def _write(self, staged, kept, dup_sets) -> dict:
        import ray

        cleaned = []
        if kept is not None:
            kept = kept.map_batches(_with_part, batch_format="pyarrow")
            kept.write_parquet(str(self.work / "kept"))  # materialize once: sizes, then files
        if any((self.work / "kept").glob("*.parquet")):
            # sizes from two small columns; the texts are read once, by the scatter below
            lengths = ray.data.read_parquet(str(self.work / "kept"), partitioning=None, columns=["_part", "n_chars"])
            sizes = {k[0]: chars for k, (_, chars) in sum_by(lengths, ["_part"], "n_chars").items()}
            kept = ray.data.read_parquet(str(self.work / "kept"), partitioning=None)
            target = self.cfg.write.target_file_chars
            buckets = {p: max(1, math.ceil((c or 0) / target)) for p, c in sizes.items()}
            cleaned = self._write_grouped(kept, "cleaned", CLEANED_SCHEMA, ["id", "source", "position"],
                                          key="id", buckets=buckets)

        dups_dir = self.work / "dups"
        for i, d in enumerate(dup_sets):
            d.write_parquet(str(dups_dir / str(i)))
        has_dups = any(dups_dir.rglob("*.parquet"))
        duplicates = []
        if has_dups:
            dup_rows = ray.data.read_parquet(str(dups_dir), partitioning=None)
            duplicates = self._write_small(dup_rows, "duplicates", DUPLICATES_SCHEMA, ["id", "source", "position"],
                                           key="id")

        quarantine = staged.map_batches(_quarantined, batch_format="pyarrow")
        quarantined = self._write_small(quarantine, "quarantine", QUARANTINE_SCHEMA,
                                        ["source_file", "position"], key="source_file")
        return {"cleaned": cleaned, "duplicates": duplicates, "quarantine": quarantined,
                "read": staged.count(), "dups_dir": str(dups_dir) if has_dups else None}

    def _write_grouped(self, ds, name: str, schema, sort_keys, key, buckets) -> list[dict]:
        """Scatter rows to hash-bucket fragments, then merge each bucket into one sorted file."""
        import ray

        frag_dir, out_dir = str(self.work / "fragments" / name), str(self.final / name)
        ds.map_batches(scatter_block, batch_format="pyarrow", fn_kwargs={
            "frag_dir": frag_dir, "key": key, "buckets": buckets, "schema": schema, "sort_keys": sort_keys,
        }).materialize()
        dirs = bucket_dirs(frag_dir)
        if not dirs:
            return []
        # A few bucket directories per task: a task costs ~40 ms, 8 s for the demo's 206 one by one.
        tasks = min(len(dirs), MERGE_TASKS_PER_CPU * cluster_cpus())
        merged = ray.data.from_items([{"dir": d} for d in dirs], override_num_blocks=tasks).map_batches(
            merge_buckets, batch_size=None, batch_format="pyarrow",
            fn_kwargs={"frag_dir": frag_dir, "out_dir": out_dir, "schema": schema, "sort_keys": sort_keys})
        return sorted(merged.take_all(), key=lambda r: r["path"])

    def _write_small(self, ds, name, schema, sort_keys, key) -> list[dict]:
        rows = ds.count()
        if rows == 0:
            return []
        return self._write_grouped(ds, name, schema, sort_keys, key,
                                   buckets=max(1, math.ceil(rows / ROWS_PER_SMALL_FILE)))

    def _stats(self, written: dict) -> dict:
        import ray

        parts = []
        if written["quarantine"]:
            parts.append(ray.data.read_parquet(str(self.final / "quarantine"), partitioning=None,
                                               columns=["category", "reason", "n_chars"])
                         .map_batches(_fates, batch_format="pyarrow", fn_kwargs={"stage": "read"}))
        if written["dups_dir"]:
            parts.append(ray.data.read_parquet(written["dups_dir"], partitioning=None,
                                               columns=["category", "lang", "stage", "n_chars"])
                         .map_batches(_fates, batch_format="pyarrow", fn_kwargs={"stage": "dropped"}))
        if written["cleaned"]:
            # The materialized kept rows carry n_chars, so the texts need not be read again.
            parts.append(ray.data.read_parquet(str(self.work / "kept"), partitioning=None,
                                               columns=["category", "lang", "n_chars"])
                         .map_batches(_fates, batch_format="pyarrow", fn_kwargs={"stage": accounting.KEPT}))
        fates = []
        if parts:
            ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
            fates = [accounting.Fate(*key, docs, chars) for key, (docs, chars)
                     in sorted(sum_by(ds, ["category", "lang", "stage", "reason"], "n_chars").items())]
        stats = accounting.build_stats(fates)
        identity = accounting.check_identity(
            read=written["read"],
            kept=sum(r["docs"] for r in written["cleaned"]),
            dropped=sum(r["docs"] for r in written["duplicates"]),
            quarantined=sum(r["docs"] for r in written["quarantine"]))
        stats["accounting"] = identity
        stats["inputs"] = {"files": len(self.files), "sources": sorted(f.source for f in self.files)}
        shaping = job_config(self.cfg)  # without batch sizes and Ray settings: same bytes on any cluster
        stats["config"] = {"langid": shaping["langid"], "dedup": shaping["dedup"]}
        return stats

    def _publish(self) -> None:
        """Swap the finished outputs into place, replacing those of an earlier run."""
        for name in ("cleaned", "duplicates", "quarantine"):
            target = self.out / name
            if target.exists():
                shutil.rmtree(target)
            src = self.final / name
            if src.exists():
                os.replace(src, target)
            else:
                target.mkdir(parents=True)


def run_clean(cfg: Config, fingerprint: str | None = None) -> dict:
    return CleanJob(cfg, fingerprint).run()
