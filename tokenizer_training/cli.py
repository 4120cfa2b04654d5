"""`xdp train-tokenizer` and `xdp tokenizer-eval`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re

from pipeline.config import ConfigError, RayConfig, TokenizerConfig, cli_flag, validate_tokenizer
from pipeline.ray_session import add_ray_args, with_ray_args

_DEFAULTS = TokenizerConfig()
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> int:
    """`150000000`, `150M`, `8GiB`, `1.5G` -> bytes (decimal K/M/G, binary Ki/Mi/Gi; a trailing B is optional)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 150M, 8GiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def _train(args) -> int:
    from tokenizer_training.job import train_tokenizer

    overrides = {name: getattr(args, name) for name in
                 ("vocab_size", "sample_bytes", "seed", "temperature", "min_frequency", "max_memory", "ratios")
                 if getattr(args, name) is not None}
    tok_cfg = validate_tokenizer(dataclasses.replace(_DEFAULTS, **overrides), name=cli_flag)
    report = train_tokenizer(args.input, args.output, tok_cfg,
                             with_ray_args(RayConfig(), args))
    sample = report["sample"]
    print(f"{report['vocab_size']:,} tokens -> {args.output} "
          f"(sample {sample['bytes']:,} bytes / {sample['docs']:,} docs, {report['time_s']['total']} s, "
          f"peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB)")
    if sample["short_languages"]:
        print(f"less text than the share asks (all of it used): {', '.join(sample['short_languages'])}")
    return 0


def _eval(args) -> int:
    from pathlib import Path

    from tokenizer_training.evaluate import evaluate, format_report

    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        raise ConfigError(f"{args.tokenizer}: no tokenizer.json (expected a train-tokenizer output directory)")
    report = evaluate(args.tokenizer, args.input)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 1 if report["roundtrip_failures"] else 0


def register(sub) -> None:
    p = sub.add_parser(
        "train-tokenizer",
        help="train the byte-level BPE tokenizer on a language-balanced sample",
        description="Sample the corpus by the language table (temperature floor for thin languages, code at "
                    "its category share), stream it from Ray into a byte-level BPE trainer, and write a "
                    "tokenizer directory that transformers.AutoTokenizer loads offline. Special tokens: "
                    "<pad>=0, <|startoftext|>=1, <|endoftext|>=2 (counted inside --vocab-size).",
        epilog="example: xdp train-tokenizer --input out/cleaned --output out/tokenizer --vocab-size 4000 "
               "--sample-bytes 20M",
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="cleaned Parquet directory (category=/lang= partitions), or JSONL(.gz/.zst)/Parquet "
                        "files, directories or globs with columns text, lang, category, code_lang")
    p.add_argument("--output", required=True, metavar="TOK_DIR", help="directory to write the tokenizer to")
    p.add_argument("--vocab-size", type=int, help=f"exact vocabulary size incl. specials (default {_DEFAULTS.vocab_size:,})")
    p.add_argument("--sample-bytes", type=parse_bytes, metavar="N",
                   help=f"UTF-8 bytes of text to train on, e.g. 150M (default {_DEFAULTS.sample_bytes:,})")
    p.add_argument("--seed", type=int, help=f"sampling seed (default {_DEFAULTS.seed})")
    p.add_argument("--temperature", type=float,
                   help=f"language sampling exponent in (0, 1]: 1 follows the table, lower lifts thin languages "
                        f"(default {_DEFAULTS.temperature})")
    p.add_argument("--min-frequency", type=int, help=f"minimum pair count to merge (default {_DEFAULTS.min_frequency})")
    p.add_argument("--ratios", metavar="RATIOS.yaml", help="ratio tables (default: the shipped XVERSE-65B tables)")
    p.add_argument("--max-memory", type=parse_bytes, metavar="BYTES",
                   help="cap the sample so the predicted peak RSS fits, e.g. 8GiB (default: half this machine's RAM)")
    add_ray_args(p)
    p.set_defaults(func=_train)

    e = sub.add_parser(
        "tokenizer-eval",
        help="bytes/token, tokens/word, vocabulary per script and round trip on held-out text",
        description="Evaluate a tokenizer directory on held-out JSONL/Parquet text (columns text, lang). "
                    "Exit status 1 when any text fails decode(encode(x)) == x other than by NFC normalization.",
        epilog="example: xdp tokenizer-eval out/tokenizer --input lid_dev.jsonl.gz --json",
    )
    e.add_argument("tokenizer", metavar="TOK_DIR", help="directory written by train-tokenizer")
    e.add_argument("--input", nargs="+", required=True, metavar="HELDOUT", help="held-out files, directories or globs")
    e.add_argument("--json", action="store_true", help="print the full report as JSON")
    e.set_defaults(func=_eval)
