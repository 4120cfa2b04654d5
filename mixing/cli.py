"""`xdp plan`, `xdp mix`, `xdp stats`: thin wrappers over mixing.job, mixing.stats and mixing.report."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.ray_session import add_ray_args, with_ray_args


def _dirs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="job config YAML (the mixing section is used)")
    p.add_argument("--cleaned", help="cleaned-document directory (default: <output>/cleaned)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: <output>/tokenizer)")
    add_ray_args(p, config=True)


def register(sub) -> None:
    p = sub.add_parser("plan", help="print per-bucket sampling rates for the target ratios (writes nothing)",
                       description="Tokenize the cleaned documents (exact counts), solve the mix for the three "
                                   "ratio tables and print rates, epochs and expected tokens per bucket.",
                       epilog="example: xdp plan --config configs/shared_corpus.yaml --json")
    _dirs_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("mix", help="tokenize, sample to the target ratios, pack and write shards + report",
                       description="Write <out>/shards (uint32 packed sequences + manifest.json) and "
                                   "<out>/report (stats.json, PNG plots, report.html).",
                       epilog="example: xdp mix --config configs/shared_corpus.yaml --out out/")
    _dirs_args(p)
    p.add_argument("--output", "--out", dest="out", metavar="DIR", help="output directory (default: the config's output)")
    p.set_defaults(func=cmd_mix)

    p = sub.add_parser("stats", help="target vs realized shares of a shard or cleaned-document directory",
                       description="Shares per category, language and programming language, tokens and epochs "
                                   "per bucket, packing efficiency and drops per stage. On a cleaned directory, "
                                   "counts tokens with --tokenizer, else characters.",
                       epilog="examples: xdp stats out/shards --json;  xdp stats out/cleaned --report out/clean-report")
    p.add_argument("dir", help="shard directory (or a mix output holding shards/), or a cleaned-document directory")
    p.add_argument("--json", action="store_true", help="print the stats JSON instead of tables")
    p.add_argument("--report", metavar="DIR", help="also write stats.json, PNG plots and report.html here")
    p.add_argument("--tokenizer", help="cleaned directories: count tokens with this tokenizer (uses Ray)")
    p.add_argument("--ratios", help="cleaned directories: ratio YAML for the targets (default: XVERSE-65B)")
    p.add_argument("--no-verify", action="store_true",
                   help="shard directories: skip checking every shard's sha256 against the manifest")
    add_ray_args(p)
    p.set_defaults(func=cmd_stats)


def _print_tables(stats: dict, out=None) -> None:
    from mixing.stats import by_target, stage_removals

    out = out or sys.stdout  # at call time: a test's capture replaces sys.stdout
    unit = stats.get("unit", "tokens")
    for table in ("categories", "languages", "code_languages"):
        print(f"\n{table}:  name  target  realized  {unit}", file=out)
        for name, v in by_target(stats[table]):
            print(f"  {name:<14} {100 * v['target']:7.3f}%  {100 * v['realized']:7.3f}%  {v['tokens']:>14,}", file=out)
    print(f"\n{'bucket':<28} {'available':>14} {unit:>14} {'epochs':>7} {'documents':>10}", file=out)
    for name, b in sorted(stats["buckets"].items()):  # a mix's, or (no plan) the cleaned data's
        epochs = f"{b['epochs']:7.3f}" if "epochs" in b else f"{'':7}"
        docs = (f"{b['selected_documents']:,}/{b['available_documents']:,}" if "available_documents" in b
                else f"{b['documents']:,}")
        print(f"{name:<28} {b.get('available', b['tokens']):>14,} {b['tokens']:>14,} {epochs} {docs:>10}", file=out)
    for name, e in sorted(stats.get("excluded", {}).items()):
        print(f"excluded: {name}: {e['available']:,} {unit}, {e.get('documents', '?')} documents: {e['reason']}",
              file=out)
    if "documents" in stats:
        _print_documents(stats["documents"], out)
    for stage, kind, reason, d in stage_removals(stats.get("stages") or {}):
        print(f"{kind} in {stage}: {reason}: {d['docs']:,} documents, {d['chars']:,} characters", file=out)
    if "packing" in stats:
        p = stats["packing"]
        print(f"\npacking: {p['sequences']:,} sequences of {p['sequence_length']:,}, efficiency "
              f"{100 * p['efficiency']:.3f}%, documents split {p['split_documents']:,} "
              f"(concatenate-and-chunk would split {p['concat_split_documents']:,})", file=out)
    for issue in stats.get("issues", []):
        print(f"not met: {issue['table']}.{issue['name']}: {issue['status']}: {issue['detail']}", file=out)


def _print_documents(acc: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"\ndocuments: read {acc['read']:,} = selected {acc['selected']:,} + not selected {acc['not_selected']:,} "
          f"+ excluded {acc['excluded']:,} (outside the ratio tables) + no text {acc['no_text']:,}; "
          f"{acc['copies']:,} copies written", file=out)


def cmd_plan(args) -> int:
    from mixing.job import default_dirs, plan_cleaned
    from mixing.stats import mix_stats
    from pipeline.config import load_config

    cfg = load_config(args.config)
    cfg.ray = with_ray_args(cfg.ray, args)
    cleaned, tokenizer = default_dirs(cfg, args.cleaned, args.tokenizer)
    plan, selections, read = plan_cleaned(cleaned, tokenizer, cfg)
    stats = mix_stats(plan, selections, {}, None, read)  # what `xdp mix` would select and write
    if args.json:
        selected = {name: {k: b[k] for k in ("tokens", "documents", "selected_documents")}
                    for name, b in stats["buckets"].items()}
        print(json.dumps({**plan.to_dict(), "selected": selected, "selected_tokens": stats["total_tokens"],
                          "documents": stats["documents"], "issues": stats["issues"]}, indent=2, sort_keys=True))
        return 0
    # a request the data cannot hold, or tables no budget meets exactly: say why next to the number
    budget = "".join(f"; {i['detail']}" for i in plan.issues if i["table"] == "budget")
    print(f"budget: {plan.total_tokens:,.0f} tokens ({plan.budget_rule}{budget}), repetition cap {plan.max_epochs:g}")
    print(f"{'bucket':<28} {'available':>14} {'planned':>14} {'epochs':>7} {'selected':>14}")
    for b in plan.buckets:
        s = selections[(b.category, b.key)]
        print(f"{b.name:<28} {b.available:>14,} {b.tokens:>14,.0f} {b.rate:>7.3f} {s.tokens:>14,}")
    for table in ("categories", "languages", "code_languages"):
        shares = plan.shares(table)
        print(f"\n{table}: " + ", ".join(f"{k} {100 * plan.targets[table][k]:.2f}%->{100 * v:.2f}%"
                                         for k, v in shares.items()))
    if plan.excluded:
        print(f"\nexcluded: {len(plan.excluded)} buckets, {sum(e['available'] for e in plan.excluded.values()):,}"
              " tokens (outside the ratio tables)")
    _print_documents(stats["documents"])
    for issue in stats["issues"]:  # the plan's, then the selection's
        print(f"not met: {issue['table']}.{issue['name']}: {issue['status']}: {issue['detail']}")
    return 0


def cmd_mix(args) -> int:
    from mixing.job import default_dirs, mix_from_config
    from pipeline.config import load_config
    from pipeline.preflight import check_output_dir

    cfg = load_config(args.config)
    cfg.ray = with_ray_args(cfg.ray, args)
    cleaned, tokenizer = default_dirs(cfg, args.cleaned, args.tokenizer)
    out = args.out or cfg.output
    check_output_dir(out, "--output" if args.out else "output",
                     reads=[("--cleaned", cleaned), ("--tokenizer", tokenizer)])
    summary = mix_from_config(cfg, cleaned, tokenizer, out)
    print(json.dumps(summary))
    return 0


def cmd_stats(args) -> int:
    from pathlib import Path

    from mixing.report import write_report
    from mixing.shards import SHARD_GLOB, ShardError
    from mixing.stats import find_shard_dir, shard_stats
    from pipeline.config import ConfigError, RayConfig
    from pipeline.preflight import check_output_dir

    directory = Path(args.dir)
    if not directory.is_dir():
        raise ConfigError(f"{args.dir}: {'not a directory' if directory.exists() else 'no such directory'}")
    shard_dir = find_shard_dir(args.dir)
    if shard_dir is not None:
        ignored = [flag for flag, value in (("--tokenizer", args.tokenizer), ("--ratios", args.ratios)) if value]
        if ignored:
            raise ConfigError(f"{' and '.join(ignored)}: only for a cleaned directory; {args.dir} holds shards, "
                              "whose manifest names their tokenizer and ratios")
        if args.report:
            check_output_dir(args.report, "--report")
        stats = shard_stats(shard_dir, verify=not args.no_verify)
    elif any(directory.glob(SHARD_GLOB)) or any(directory.glob(f"shards/{SHARD_GLOB}")):
        raise ShardError(f"{args.dir}: shards but no manifest.json (an unfinished `xdp mix`?)")
    elif (directory / "_job" / "mix.started.json").is_file():
        raise ShardError(f"{args.dir}: a mix started there but wrote no shards yet (an unfinished `xdp mix` or "
                         f"`xdp run`: rerun it); for the cleaned documents' shares, give {directory / 'cleaned'}")
    else:
        from mixing.job import cleaned_counts
        from mixing.ratios import load_ratios
        from mixing.stats import cleaned_stats, load_stage_stats

        if args.report:  # a report inside the cleaned directory would be read back as documents
            check_output_dir(args.report, "--report", reads=[("DIR", args.dir)])
        ratios = load_ratios(args.ratios)
        counts, unit = cleaned_counts(args.dir, args.tokenizer, with_ray_args(RayConfig(), args))
        stats = cleaned_stats(counts, ratios, unit, load_stage_stats(args.dir))
    if args.report:
        write_report(stats, args.report)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        _print_tables(stats)
    return 0
