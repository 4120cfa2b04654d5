"""`xdp clean`, `xdp run` and `xdp demo`: the whole-job commands."""
from __future__ import annotations

import argparse
import json
import logging
import os
from importlib import resources
from pathlib import Path

from pipeline.config import Config, load_config

log = logging.getLogger("xdp")

STEPS = ("clean", "tokenizer", "mix")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", help="output directory (overrides `output:` in the config)")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")


def _load(args) -> Config:
    cfg = load_config(args.config)
    if args.output:
        cfg.output = os.path.abspath(args.output)
    if args.address:
        cfg.ray.address = args.address
    if getattr(args, "num_cpus", None):
        cfg.ray.num_cpus = args.num_cpus
    return cfg


def _print_clean_summary(stats: dict) -> None:
    acc = stats["accounting"]
    print(f"read {acc['read']:,}  kept {acc['kept']:,}  dropped {acc['dropped']:,}  "
          f"quarantined {acc['quarantined']:,}")
    for reason, n in sorted(stats["totals"]["dropped"].items()):
        print(f"  dropped   {reason:<24} {n['docs']:>10,} docs {n['chars']:>14,} chars")
    for reason, n in sorted(stats["totals"]["quarantined"].items()):
        print(f"  quarantined {reason:<22} {n['docs']:>10,} docs")


def run_job(cfg: Config, steps=STEPS) -> dict:
    """Run the configured stages in order inside one Ray session; returns a summary per step."""
    from pipeline.clean_job import run_clean
    from pipeline.ray_session import ray_session

    out = Path(cfg.output)
    summary: dict = {}
    with ray_session(cfg.ray):
        if "clean" in steps:
            summary["clean"] = run_clean(cfg)["accounting"]
        if "tokenizer" in steps and cfg.tokenizer.enabled:
            from tokenizer_training.job import train_tokenizer_from_config

            report = train_tokenizer_from_config(cfg, str(out / "cleaned"), str(out / "tokenizer"))
            summary["tokenizer"] = {"vocab_size": report.get("vocab_size"), "dir": str(out / "tokenizer")}
        if "mix" in steps and cfg.mixing.enabled:
            from mixing.job import mix_from_config

            summary["mix"] = mix_from_config(cfg, str(out / "cleaned"), str(out / "tokenizer"), str(out))
    return summary


def cmd_clean(args) -> int:
    from pipeline.clean_job import run_clean

    cfg = _load(args)
    stats = run_clean(cfg)
    _print_clean_summary(stats)
    print(f"outputs in {cfg.output} (cleaned/, quarantine/, duplicates/, stats.json)")
    return 0


def cmd_run(args) -> int:
    cfg = _load(args)
    steps = tuple(s.strip() for s in args.steps.split(",")) if args.steps else STEPS
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        from pipeline.config import ConfigError

        raise ConfigError(f"--steps: unknown step {unknown[0]!r} (one of {', '.join(STEPS)})")
    summary = run_job(cfg, steps)
    print(json.dumps(summary, indent=2, default=str))
    print(f"outputs in {cfg.output}")
    return 0


def demo_config_path() -> Path:
    return Path(str(resources.files("pipeline") / "demo" / "demo.yaml"))


def cmd_demo(args) -> int:
    cfg = load_config(demo_config_path())
    cfg.output = os.path.abspath(args.output)
    if args.address:
        cfg.ray.address = args.address
    summary = run_job(cfg)
    if args.train_steps:
        # The last link of the chain: the bundled model learns from the shards just written.
        from model.train import TrainConfig, loss_fell, train

        result = train(TrainConfig(shards=os.path.join(cfg.output, "shards"), preset="tiny",
                                   steps=args.train_steps))
        summary["smoke_train"] = {k: result[k] for k in ("first_loss", "last_loss", "steps", "tokens_per_s",
                                                          "backend", "world_size", "device")}
        if not loss_fell(result):
            print(json.dumps(summary, indent=2, default=str))
            print("xdp demo: the smoke-train loss did not fall", flush=True)
            return 1
    print(json.dumps(summary, indent=2, default=str))
    print(f"demo outputs in {cfg.output}: cleaned/, quarantine/, duplicates/, stats.json, tokenizer/, "
          f"shards/, report/report.html")
    return 0


def register(sub) -> None:
    p = sub.add_parser("clean", help="stages 1-6: read, validate, normalize, language ID, dedup, write",
                       description="Read the configured inputs, quarantine bad records, normalize, identify "
                                   "languages, remove exact and near duplicates, and write cleaned Parquet, "
                                   "quarantine, duplicates and stats.json under the output directory.")
    p.add_argument("--config", required=True, help="job config YAML (see configs/)")
    _add_common(p)
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("run", help="the whole job: clean, train the tokenizer, mix + pack + shard, report",
                       description="Run every stage of the job from raw inputs to shards and the report.")
    p.add_argument("--config", required=True, help="job config YAML (see configs/)")
    p.add_argument("--steps", help=f"comma-separated subset of {','.join(STEPS)} (default: all)")
    _add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the whole job on the bundled demo corpus (offline, local Ray)",
                       description="Run `xdp run` on the small multilingual demo corpus shipped in the package.")
    p.add_argument("--output", default="xdp-demo", help="output directory (default: ./xdp-demo)")
    p.add_argument("--address", help="Ray cluster to join (default: a local Ray)")
    p.add_argument("--train-steps", type=int, default=20,
                   help="smoke-train the tiny model on the demo shards for this many steps (0: skip; default 20)")
    p.set_defaults(func=cmd_demo)
