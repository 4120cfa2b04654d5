"""`xdp dedup IN.jsonl OUT_DIR`: exact then MinHash near-duplicate removal of one JSONL file, on Ray.

The records are copied unchanged into ``OUT_DIR/kept.jsonl`` (in input order) and every removed id
goes to ``OUT_DIR/duplicates.parquet`` (``id, duplicate_of, stage``). The input is streamed twice on
the driver (once into Parquet for Ray, once to copy the kept lines); the driver holds ids, not text.
"""
from __future__ import annotations

import argparse
import os
import shutil
from collections import Counter
from pathlib import Path

from pipeline.config import ConfigError, DedupConfig, RayConfig, cli_flag, validate_dedup
from pipeline.preflight import check_output_dir
from pipeline.ray_session import add_ray_args, ray_session, with_ray_args

_BATCH = 4096


def register(sub) -> None:
    defaults = DedupConfig()
    p = sub.add_parser(
        "dedup", help="remove exact and near duplicates from a JSONL file",
        description="Exact (hash of the text) then MinHash-LSH near-duplicate removal of IN (JSONL, optionally "
                    ".gz/.zst; every record needs a unique `id` and a string `text`; an optional `lang` "
                    "chooses word or character shingles). Writes OUT_DIR/kept.jsonl (the kept records, "
                    "unchanged, in input order) and OUT_DIR/duplicates.parquet (id, duplicate_of, stage). "
                    "The survivor of each group is its smallest id.",
        epilog="example: xdp dedup docs.jsonl out/ --threshold 0.8 --num-perm 128 --ngram 5",
    )
    p.add_argument("input", metavar="IN.jsonl", help="input JSONL file")
    p.add_argument("output", metavar="OUT_DIR", help="output directory (created)")
    p.add_argument("--threshold", type=float, default=defaults.threshold,
                   help="Jaccard similarity at which documents count as near duplicates (default %(default)s)")
    p.add_argument("--num-perm", type=int, default=defaults.num_perm,
                   help="MinHash permutations (default %(default)s)")
    p.add_argument("--ngram", type=int, default=defaults.ngram, help="words per shingle (default %(default)s)")
    p.add_argument("--char-ngram", type=int, default=defaults.char_ngram,
                   help="characters per shingle for unspaced scripts such as zh/ja/th (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="permutation seed (default %(default)s)")
    p.add_argument("--num-partitions", type=int, default=defaults.num_partitions,
                   help="least number of hash partitions for grouping; more are used as the input grows "
                        "(about one per 32M characters or 100k documents), and forcing more only slows "
                        "the job (default %(default)s)")
    p.add_argument("--no-exact", action="store_true", help="skip exact dedup")
    p.add_argument("--no-near", action="store_true", help="skip MinHash near dedup")
    add_ray_args(p)
    p.set_defaults(func=run)


def _record_id(path: str, n: int, rec: dict) -> str:
    rid = rec.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise ConfigError(f"{path}:{n}: missing or invalid `id` (a non-empty string or integer is required)")
    return str(rid)


def _stage_input(path: str, target: Path) -> int:
    """Validate ids and texts and write (id, text, lang, category) to Parquet for Ray; returns the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.langid_io import iter_json_records

    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("lang", pa.string()), ("category", pa.string())])
    seen: dict[str, int] = {}
    batch: list[dict] = []
    with pq.ParquetWriter(target, schema) as writer:
        for n, _, rec in iter_json_records(path):
            rid = _record_id(path, n, rec)
            if rid in seen:
                raise ConfigError(f"{path}:{n}: duplicate id {rid!r} (first on line {seen[rid]})")
            seen[rid] = n
            text = rec.get("text")
            if not isinstance(text, str):
                raise ConfigError(f"{path}:{n}: missing or non-string `text`")
            lang, cat = rec.get("lang"), rec.get("category")
            batch.append({"id": rid, "text": text, "lang": lang if isinstance(lang, str) else None,
                          "category": cat if isinstance(cat, str) else None})
            if len(batch) >= _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema))
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema))
    return len(seen)


def _collect(ds) -> list:
    """The (id, duplicate_of, stage) columns of a duplicates Dataset, as Arrow tables on the driver."""
    import ray

    return [t.select(["id", "duplicate_of", "stage"]) for t in ray.get(ds.to_arrow_refs()) if t.num_rows]


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import ray

    from pipeline.dedup import through_later_removals
    from pipeline.dedup_ray import exact_dedup, near_dedup
    from pipeline.langid_io import atomic_output, iter_json_records
    from pipeline.write import write_parquet_atomic
    from pipeline.schema import DUPLICATES_SCHEMA

    cfg = validate_dedup(DedupConfig(exact=not args.no_exact, near=not args.no_near, threshold=args.threshold,
                                     num_perm=args.num_perm, ngram=args.ngram, char_ngram=args.char_ngram,
                                     seed=args.seed, num_partitions=args.num_partitions), name=cli_flag)
    if args.no_exact and args.no_near:
        raise ConfigError("--no-exact with --no-near leaves nothing to do")
    if not os.path.isfile(args.input):
        what = "a directory, not a file" if os.path.isdir(args.input) else "no such file"
        raise ConfigError(f"IN.jsonl {args.input}: {what}")
    check_output_dir(args.output, "OUT_DIR")
    out = Path(args.output)
    created = not out.exists()
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    try:
        total = _stage_input(args.input, work / "input.parquet")
        removed = []
        with ray_session(with_ray_args(RayConfig(), args), writes=str(work)):
            kept = ray.data.read_parquet(str(work / "input.parquet"), partitioning=None)
            for enabled, step in ((cfg.exact, exact_dedup), (cfg.near, near_dedup)):
                if enabled:
                    kept, dups = step(kept, cfg, str(work))
                    removed += _collect(dups)
        if len(removed) == 2:  # an exact duplicate's copy that near dedup removed: name its survivor
            removed[0] = through_later_removals(removed[0], removed[1])
        # Ids are unique in one input file, so the job's locating columns (source, position) are not needed.
        schema = pa.schema([DUPLICATES_SCHEMA.field(name) for name in ("id", "duplicate_of", "stage")])
        dups = pa.concat_tables([schema.empty_table(), *(t.cast(schema) for t in removed)])
        dups = dups.sort_by([("stage", "ascending"), ("id", "ascending")])
        write_parquet_atomic(dups, out / "duplicates.parquet")
        gone = set(dups.column("id").to_pylist())
        with atomic_output(out / "kept.jsonl") as f:
            for n, line, rec in iter_json_records(args.input):
                if _record_id(args.input, n, rec) not in gone:
                    f.write(line if line.endswith("\n") else line + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out.iterdir()):  # a refused input leaves no trace
            out.rmdir()
    by_stage = Counter(dups.column("stage").to_pylist())
    print(f"{total:,} documents: {by_stage.get('exact', 0):,} exact and {by_stage.get('minhash', 0):,} near "
          f"duplicates removed, {total - len(gone):,} kept -> {out / 'kept.jsonl'}, {out / 'duplicates.parquet'}")
    return 0
