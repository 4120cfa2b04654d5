"""`xdp smoke-train`: train the bundled decoder on packed shards for a few steps and judge the loss."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from model.config import PRESETS
from pipeline.config import ConfigError

EPILOG = """\
examples:
  xdp smoke-train --shards out/shards --steps 50                 # one process (CPU or one GPU)
  xdp smoke-train --shards out/shards --nproc 2                  # two local processes, DDP (gloo on CPU)
  xdp smoke-train --shards out/shards --nproc 2 --fsdp           # the same with FSDP2
  torchrun --nproc_per_node 8 -m pipeline.cli smoke-train --shards out/shards --preset proxy-1b
  xdp smoke-train --shards /shared/shards --ray --nproc 16 --address auto

The last stdout line is a JSON summary {first_loss, last_loss, steps, tokens_per_s, backend,
world_size, device, ...}. Exit status: 0 when the loss fell; 1 when it is not finite or did not fall
(stderr says which) or on an unexpected error (a traceback); 2 on bad input or a config error.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("smoke-train", help="smoke-train the bundled XVERSE-shaped decoder on packed shards",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard directory (shard-*.parquet + manifest.json)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model shape (default: tiny)")
    p.add_argument("--steps", type=int, default=20,
                   help="optimizer steps in total, resumed ones included (default: 20)")
    p.add_argument("--batch-size", type=int, default=1, help="packed rows per process per forward pass (default: 1)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="forward passes per process per optimizer step, gradients accumulated: a step trains on "
                        "batch-size x grad-accum rows per process with one batch-size's activation memory (default: 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default: a tenth of --steps)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and data order (default: 0)")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this host (or Ray workers with --ray); ignored under torchrun (default: 1)")
    p.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP2 instead of replicating with DDP")
    p.add_argument("--ray", action="store_true", help="run the workers through Ray Train's TorchTrainer")
    p.add_argument("--address", "--ray-address", dest="ray_address", default=None,
                   help="Ray cluster to join with --ray (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--attention", default="auto",
                   help="flash, varlen, cudnn or cudnn_fe (both self-checked first), sdpa_mask, sdpa_docs or auto (default: flash, "
                        "else varlen on CUDA; sdpa_docs on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU runs)")
    p.add_argument("--loss-chunk", type=int, default=None,
                   help="tokens per output-layer/loss chunk, recomputed in backward to cap logit memory; "
                        "0: all at once (default: 4096 on CPU, 0 on GPU)")
    p.add_argument("--checkpoint-dir", default=None, help="write torch.distributed.checkpoint dirs step-N here")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (default: only the last)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint directory (step-N)")
    p.add_argument("--log-every", type=int, default=1, help="log every N steps (default: 1)")
    p.add_argument("--peak-tflops", type=float, default=990.0,
                   help="per-GPU dense bf16 peak for MFU (default: 990, H100/H200)")
    p.add_argument("--no-verify", action="store_true", help="skip the shards' sha256 check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.attention import BACKENDS
    from pipeline.preflight import check_output_dir
    from model.train import (TrainConfig, check_resume_dir, launch_local, launch_ray, loss_fell, loss_verdict,
                             preflight, train_and_leave)

    if not (Path(args.shards) / "manifest.json").is_file():
        raise ConfigError(f"--shards {args.shards}: no manifest.json (not a shard directory?)")
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.attention not in ("auto", *BACKENDS):
        raise ConfigError(f"--attention {args.attention!r}: choose auto or one of {', '.join(BACKENDS)}")
    if args.resume:
        check_resume_dir(Path(args.resume))
    if args.checkpoint_dir:  # before training, not when the first save fails
        check_output_dir(args.checkpoint_dir, "--checkpoint-dir", reads=[("--shards", args.shards)])
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    if args.fsdp and not args.ray and not under_torchrun and args.nproc < 2:
        raise ConfigError("--fsdp shards across processes: use --nproc >= 2, --ray or torchrun")
    # Absolute: Ray Train workers run in their own directory, where a relative path means another place.
    absolute = {name: os.path.abspath(getattr(args, name)) if getattr(args, name) else None
                for name in ("shards", "checkpoint_dir", "resume")}
    cfg = TrainConfig(
        shards=absolute["shards"], preset=args.preset, steps=args.steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, seed=args.seed, fsdp=args.fsdp, attention=args.attention,
        compile=args.compile, loss_chunk=args.loss_chunk, checkpoint_dir=absolute["checkpoint_dir"],
        checkpoint_every=args.checkpoint_every, resume=absolute["resume"], log_every=args.log_every,
        peak_tflops=args.peak_tflops, verify=not args.no_verify,
    )
    if under_torchrun:  # every rank runs this: each checks the shards it reads, as it opens them
        summary = train_and_leave(cfg)
    else:  # bad shards or a mismatched checkpoint: one message here, not a traceback from each worker
        preflight(cfg, args.nproc)
        if args.ray:
            summary = launch_ray(cfg, args.nproc, args.ray_address)
        elif args.nproc > 1:
            summary = launch_local(cfg, args.nproc)
        else:
            summary = train_and_leave(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0 if loss_fell(summary) else 1
    print(json.dumps(summary), flush=True)
    verdict = loss_verdict(summary)
    if verdict:
        print(f"xdp smoke-train: {verdict}", file=sys.stderr, flush=True)
    return 1 if verdict else 0
