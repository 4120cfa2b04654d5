"""`xdp clean`, `xdp run` and `xdp demo`: the whole-job commands."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from importlib import resources
from pathlib import Path

from pipeline.config import Config, load_config
from pipeline.job_state import STEPS
from pipeline.ray_session import add_ray_args, with_ray_args

log = logging.getLogger("xdp")

_SECTION = {"tokenizer": "tokenizer", "mix": "mixing"}  # config section whose `enabled` switches a step


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", help="output directory (overrides `output:` in the config)")
    add_ray_args(p, config=True)
    p.add_argument("--overwrite", action="store_true",
                   help="the output directory holds a run of a different config: redo the first changed "
                        "step and every step after it (default: refuse; steps completed by the same config "
                        "are always skipped)")


def _load(args) -> Config:
    cfg = load_config(args.config)
    if args.output:
        cfg.output = os.path.abspath(args.output)
    cfg.ray = with_ray_args(cfg.ray, args)
    return cfg


def _print_clean_summary(stats: dict) -> None:
    acc = stats["accounting"]
    print(f"read {acc['read']:,}  kept {acc['kept']:,}  dropped {acc['dropped']:,}  "
          f"quarantined {acc['quarantined']:,}")
    for reason, n in sorted(stats["totals"]["dropped"].items()):
        print(f"  dropped   {reason:<24} {n['docs']:>10,} docs {n['chars']:>14,} chars")
    for reason, n in sorted(stats["totals"]["quarantined"].items()):
        print(f"  quarantined {reason:<22} {n['docs']:>10,} docs")


def run_job(cfg: Config, steps=STEPS, overwrite: bool = False) -> dict:
    """Run the configured stages in order inside one Ray session; returns a summary per step.

    Steps completed by an earlier run of the same config are skipped, and a killed run picks up its
    finished intermediate results (`pipeline.job_state`). Output of a different config in the same
    directory is refused before Ray starts, unless `overwrite`.
    """
    from pipeline.job_state import JobState, update_timings
    from pipeline.ray_session import cluster_address, ray_session
    from pipeline.sources import first_local_files, list_input_files
    from tokenizer_training.memory import PeakRSS, release_heap

    out = Path(cfg.output)
    steps = tuple(s for s in STEPS if s in steps and (s == "clean" or getattr(cfg, _SECTION[s]).enabled))
    state = JobState(cfg, steps)
    state.check(overwrite)
    summary: dict = {}
    todo = []
    for step in steps:
        marker = state.done(step)
        if marker is not None and not todo:  # everything after a redone step is redone too
            log.info("%s: completed by an earlier run of this config; skipped", step)
            summary[step] = {**marker["summary"], "skipped": "completed earlier"}
        else:
            todo.append(step)
    if not todo:
        return summary
    _check_step_inputs(out, todo)
    driver_peaks: dict[str, int] = {}
    # What the cluster check probes; listing the inputs again is only worth it when joining a cluster.
    reads = first_local_files(list_input_files(cfg)) if "clean" in todo and cluster_address(cfg.ray) else []
    with ray_session(cfg.ray, writes=cfg.output, reads=reads):
        for step in todo:
            state.start(step)
            started = time.perf_counter()
            with PeakRSS() as driver:  # the driver's own peak in this step: which step, if any, grows it
                summary[step] = _run_step(cfg, step, state.fingerprint(step))
            release_heap()  # what the step freed (the BPE trainer's words) goes back to the OS
            if step != "clean":  # the clean job records its own stages
                update_timings(out, step, round(time.perf_counter() - started, 3))
            driver_peaks[step] = driver.peak
            update_timings(out, "driver_peak_rss_bytes", driver_peaks)
            state.finish(step, summary[step])
    return summary


def _check_step_inputs(out: Path, todo: list[str]) -> None:
    """Before Ray starts: what the first step to run reads must be there, or be made by a step before it."""
    from pipeline.config import ConfigError

    if "clean" not in todo and not any((out / "cleaned").glob("**/*.parquet")):
        raise ConfigError(f"step `{todo[0]}` reads the clean step's output, but {out / 'cleaned'} holds no Parquet "
                          "files: run the clean step first (`xdp run` without --steps, or --steps clean)")
    if "mix" in todo and "tokenizer" not in todo and not (out / "tokenizer" / "tokenizer.json").is_file():
        raise ConfigError(f"step `mix` reads the tokenizer in {out / 'tokenizer'}, which has no tokenizer.json: "
                          "train it first (the tokenizer step; tokenizer.enabled: false only reuses one)")


def _run_step(cfg: Config, step: str, fingerprint: str) -> dict:
    """One step; rerun (from its completed parts) when Ray loses a node or worker under it."""
    from pipeline.ray_session import lost_resources

    retries = 0
    while True:
        try:
            return _step_once(cfg, step, fingerprint)
        except Exception as exc:
            if retries == cfg.ray.step_retries or not lost_resources(exc):
                raise
            retries += 1
            log.warning("%s: Ray lost a node or worker (%s); rerunning the step from its completed parts "
                        "(retry %d of %d)", step, type(exc).__name__, retries, cfg.ray.step_retries)


def _step_once(cfg: Config, step: str, fingerprint: str) -> dict:
    out = Path(cfg.output)
    if step == "clean":
        from pipeline.clean_job import run_clean

        return run_clean(cfg, fingerprint)["accounting"]
    if step == "tokenizer":
        from tokenizer_training.job import train_tokenizer_from_config

        report = train_tokenizer_from_config(cfg, str(out / "cleaned"), str(out / "tokenizer"))
        return {"vocab_size": report.get("vocab_size"), "dir": str(out / "tokenizer")}
    from mixing.job import mix_from_config

    return mix_from_config(cfg, str(out / "cleaned"), str(out / "tokenizer"), str(out), fingerprint)


def cmd_clean(args) -> int:
    cfg = _load(args)
    run_job(cfg, ("clean",), overwrite=args.overwrite)
    stats = json.loads((Path(cfg.output) / "stats.json").read_text("utf-8"))
    _print_clean_summary(stats)
    print(f"outputs in {cfg.output} (cleaned/, quarantine/, duplicates/, stats.json)")
    return 0


def cmd_run(args) -> int:
    cfg = _load(args)
    from pipeline.config import ConfigError

    steps = tuple(s.strip() for s in args.steps.split(",")) if args.steps is not None else STEPS
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ConfigError(f"--steps: unknown step {unknown[0]!r} (one of {', '.join(STEPS)})")
    disabled = [s for s in steps if s != "clean" and not getattr(cfg, _SECTION[s]).enabled]
    if args.steps is not None and disabled:
        raise ConfigError(f"--steps {disabled[0]}: the config disables it ({_SECTION[disabled[0]]}.enabled: false)")
    summary = run_job(cfg, steps, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, default=str))
    print(f"outputs in {cfg.output}")
    return 0


def demo_config_path() -> Path:
    return Path(str(resources.files("pipeline") / "demo" / "demo.yaml"))


def _demo_inputs(job_dir: Path) -> bool:
    """Whether the clean step there read the bundled demo corpus (of any install): a demo directory
    written before the tag existed."""
    try:
        inputs = json.loads((job_dir / "clean.started.json").read_text("utf-8"))["config"]["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(inputs) and all(Path(spec["path"]).parent.parts[-2:] == ("pipeline", "demo") for spec in inputs)


def claim_demo_output(out: Path, overwrite: bool) -> None:
    """Tag `out` as the demo's, refusing (before Ray starts) a directory that holds another job's steps.

    The demo redoes its own steps whenever its fingerprint changes (a new xdp, another install), so it
    runs with `overwrite`; the tag keeps that from replacing a real job's outputs unasked.
    """
    from pipeline.config import ConfigError
    from pipeline.preflight import check_output_dir
    from pipeline.write import write_bytes_atomic

    check_output_dir(out, "--output")
    tag = out / "_job" / "demo"
    if not (overwrite or tag.exists() or _demo_inputs(out / "_job")) and any((out / "_job").glob("*.json")):
        raise ConfigError(f"--output {out} holds the outputs of another job, not of `xdp demo`; use another "
                          f"--output, or pass --overwrite to replace them")
    write_bytes_atomic(tag, b"")


def cmd_demo(args) -> int:
    cfg = load_config(demo_config_path())
    cfg.output = os.path.abspath(args.output)
    cfg.ray = with_ray_args(cfg.ray, args)
    train_cfg = None
    if args.train_steps:  # checked before the job, not after it
        from model.train import MIN_STEPS, TrainConfig
        from pipeline.config import ConfigError

        if args.train_steps < MIN_STEPS:
            raise ConfigError(f"--train-steps must be 0 (no training) or >= {MIN_STEPS}, got {args.train_steps}")
        train_cfg = TrainConfig(shards=os.path.join(cfg.output, "shards"), preset="tiny", steps=args.train_steps)
    claim_demo_output(Path(cfg.output), args.overwrite)
    summary = run_job(cfg, overwrite=True)
    if train_cfg is not None:
        # The last link of the chain: the bundled model learns from the shards just written.
        from model.train import loss_fell, train

        result = train(train_cfg)
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of another job in --output (default: refuse; the demo's own "
                        "outputs are reused or redone as needed)")
    add_ray_args(p)
    p.add_argument("--train-steps", type=int, default=20,
                   help="smoke-train the tiny model on the demo shards for this many steps (0: skip; default 20)")
    p.set_defaults(func=cmd_demo)
