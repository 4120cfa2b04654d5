"""Smoke training on packed shards: one loop for one process, torchrun, local spawn and Ray Train.

The loop is written once (`train`) against an optional, already-initialised process group; the
launchers only differ in who starts the processes and sets the rendezvous environment:
torchrun (the env is there), `--nproc K` (torchrun's own elastic launcher, in-process), or Ray
Train's `TorchTrainer` (which initialises the group in each worker). Parallelism is DDP, or FSDP2
(`fully_shard` per block) with `--fsdp`. Data order, learning rate and initial weights are pure
functions of (seed, step), so a run resumed from a `torch.distributed.checkpoint` continues with the
losses an uninterrupted run would have had.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from model.attention import select_backend
from model.config import preset
from model.data import Batch, BatchOrder, collate
from model.model import IGNORE_INDEX, Transformer

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.json"
MIN_STEPS = 2  # the verdict compares the first and the last loss of a run


@dataclass
class TrainConfig:
    shards: str
    preset: str = "tiny"
    steps: int = 20
    batch_size: int = 1  # packed rows per rank per forward pass (micro-batch)
    grad_accum: int = 1  # micro-batches per rank per optimizer step
    lr: float = 1e-3
    warmup_steps: Optional[int] = None  # None: a tenth of the steps
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    fsdp: bool = False
    attention: str = "auto"
    compile: bool = False
    loss_chunk: Optional[int] = None  # tokens per output-layer chunk; None: 4096 on CPU, 0 (off) on GPU
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 0  # 0: only after the last step (when checkpoint_dir is set)
    resume: Optional[str] = None
    log_every: int = 1
    peak_tflops: float = 990.0  # dense bf16 peak of one GPU (H100/H200 SXM) for MFU
    verify: bool = True  # check the shards' sha256 against the manifest

    def __post_init__(self) -> None:
        """Checked as `xdp smoke-train` flags, the way every TrainConfig is made."""
        from pipeline.config import ConfigError, cli_flag

        if self.loss_chunk is not None and self.loss_chunk < 0:
            raise ConfigError(f"--loss-chunk must be >= 0, got {self.loss_chunk}")
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{cli_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.steps < MIN_STEPS:
            raise ConfigError(f"--steps must be >= {MIN_STEPS}, got {self.steps}: the verdict compares "
                              "the first and the last loss")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:  # `not >` also refuses NaN
            raise ConfigError(f"--lr must be > 0 and min_lr_ratio within [0, 1], got {self.lr}, "
                              f"{self.min_lr_ratio}")
        if not self.peak_tflops > 0:
            raise ConfigError(f"--peak-tflops must be > 0, got {self.peak_tflops}")
        if self.checkpoint_every < 0:
            raise ConfigError("--checkpoint-every must be >= 0")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ConfigError("--checkpoint-every needs --checkpoint-dir")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"--warmup-steps must be within [0, --steps {self.steps}]")


def warmup_steps(cfg: TrainConfig) -> int:
    return cfg.steps // 10 if cfg.warmup_steps is None else cfg.warmup_steps


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup over the first `warmup` steps, `lr` at step `warmup`, then cosine decay to
    `lr * min_lr_ratio` at the last step (`steps - 1`)."""
    warmup = warmup_steps(cfg)
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - 1 - warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_world() -> World:
    """Join the process group set up by Ray Train, or create one from torchrun's environment."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # before NCCL starts, so each rank talks from its own GPU
    else:
        device = torch.device("cpu")
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if device.type == "cpu":
        # Processes sharing a host split its cores instead of oversubscribing them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return World(rank, world_size, local_rank, device)


def _wrap(model: Transformer, cfg: TrainConfig, world: World) -> torch.nn.Module:
    """FSDP2 (shard every block, then the root) or DDP; bf16 compute on GPU either way."""
    on_gpu = world.device.type == "cuda"
    if cfg.fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(world.device.type, (world.world_size,))
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_gpu
              else MixedPrecisionPolicy())
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        return fully_shard(model, mesh=mesh, mp_policy=mp)
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # The only buffers are the rotary tables, the same on every rank: nothing to send each step.
        # torch 2.13 renamed the switch (and deprecated the old name); older versions only know the old one.
        no_buffer_sync = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})
        return DistributedDataParallel(model, device_ids=[world.local_rank] if on_gpu else None, **no_buffer_sync)
    return model


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, world: World) -> torch.optim.AdamW:
    """AdamW; matrices decay, norm gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=world.device.type == "cuda")


def _mean_across_ranks(value: float, world: World) -> float:
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return float(t) / world.world_size


def _replicas_in_sync(model: torch.nn.Module, world: World) -> Optional[bool]:
    """DDP: do all ranks hold the same weights? (None for FSDP, whose ranks hold different shards.)"""
    if not world.distributed or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return None
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(world.world_size)]
    dist.all_gather(gathered, checksum)
    return all(bool(torch.equal(g, gathered[0])) for g in gathered)


def _data_order_keys(cfg: TrainConfig, world_size: int) -> dict:
    """What a checkpoint must share with the run that resumes it: the model, the data (shards of one
    tokenizer and vocabulary), and what decides which rows each step reads."""
    from mixing.shards import read_manifest

    manifest = read_manifest(cfg.shards)
    return {"preset": cfg.preset, "seed": cfg.seed, "world_size": world_size,
            "rows_per_step": cfg.batch_size * cfg.grad_accum, "vocab_size": manifest.get("vocab_size"),
            "tokenizer_sha256": manifest.get("tokenizer_sha256")}


def _schedule(cfg: TrainConfig) -> dict:
    """What shapes the updates but not which rows are read: a resumed run may change it, and is told
    that its losses then part from the uninterrupted run's."""
    return {"steps": cfg.steps, "lr": cfg.lr, "warmup_steps": warmup_steps(cfg), "min_lr_ratio": cfg.min_lr_ratio,
            "weight_decay": cfg.weight_decay, "betas": list(cfg.betas), "grad_clip": cfg.grad_clip}


def _train_state(path: Path) -> dict:
    from pipeline.config import ConfigError

    try:
        state = json.loads((path / TRAIN_STATE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--resume {path}: not a smoke-train checkpoint (no {TRAIN_STATE})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume {path}: unreadable {TRAIN_STATE} ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ConfigError(f"--resume {path}: {TRAIN_STATE} has no step")
    return state


def schedule_changes(cfg: TrainConfig) -> list[str]:
    """How this run's schedule differs from the one `cfg.resume` was trained with, as `name a -> b`."""
    state = _train_state(Path(cfg.resume))
    return [f"{key} {state[key]!r} -> {have!r}" for key, have in _schedule(cfg).items()
            if key in state and state[key] != have]


def check_resume_dir(path: Path) -> None:
    """A `--resume` directory that is not there is a ConfigError naming the checkpoint an interrupted
    save set aside in its place, if there is one (`save_checkpoint` stopped between its two renames)."""
    from pipeline.config import ConfigError

    if path.is_dir():
        return
    aside = path.with_name(path.name + ".old")
    if aside.is_dir():
        raise ConfigError(f"--resume {path}: no such checkpoint, but {aside.name} beside it is the one a save "
                          f"set aside before it was interrupted; resume from {aside}")
    raise ConfigError(f"--resume {path}: no such checkpoint directory")


def resume_step(cfg: TrainConfig, world_size: int) -> int:
    """The step `cfg.resume` is at, once its train state matches this run (else ConfigError)."""
    from pipeline.config import ConfigError

    path = Path(cfg.resume)
    check_resume_dir(path)
    state = _train_state(path)
    if not (path / ".metadata").is_file():  # what dcp.load reads first
        raise ConfigError(f"--resume {path}: incomplete checkpoint (no .metadata)")
    for key, have in _data_order_keys(cfg, world_size).items():
        if state.get(key) != have:
            raise ConfigError(f"--resume {path}: checkpoint has {key}={state.get(key)!r}, this run {have!r}")
    if cfg.steps - state["step"] < MIN_STEPS:
        raise ConfigError(f"--resume: the checkpoint is at step {state['step']}; --steps {cfg.steps} leaves "
                          f"{max(0, cfg.steps - state['step'])} to run, the verdict needs at least {MIN_STEPS}")
    return state["step"]


def preflight(cfg: TrainConfig, world_size: int) -> int:
    """What can be checked cheaply before any worker starts, so that bad input is one message from
    the launcher instead of a traceback from every rank: the manifest, that every shard is there, rows
    for every rank, the resumed checkpoint's state. Returns the step to start from. (Checksums are left
    to the ranks, each verifying a shard when it first opens it: hashing every shard up front would make
    a smoke test of a large directory wait for all of it.)"""
    from mixing.reader import PackedShards
    from pipeline.config import ConfigError

    dataset = PackedShards(cfg.shards, verify=False)
    for key in ("vocab_size", "eos_id"):
        if dataset.manifest.get(key) is None:
            raise ConfigError(f"{cfg.shards}/manifest.json has no {key!r}")
    context = preset(cfg.preset).max_seq_len
    if dataset.sequence_length > context:
        raise ConfigError(f"{cfg.shards}: rows of {dataset.sequence_length} tokens exceed preset {cfg.preset}'s "
                          f"context of {context}")
    if len(dataset) < world_size:
        raise ConfigError(f"{cfg.shards}: {len(dataset)} sequences for {world_size} processes; every process "
                          "needs at least one")
    return resume_step(cfg, world_size) if cfg.resume else 0


@contextlib.contextmanager
def _quiet_single_process_dcp(world: World):
    """`torch.distributed.checkpoint` warns on every save and load without a process group that it
    assumes one process. In a one-process run that is the intent, so the warning is only noise."""
    with warnings.catch_warnings():
        if not world.distributed:
            warnings.filterwarnings("ignore", message=r"torch\.distributed is .*single process", category=UserWarning)
        yield


def save_checkpoint(path: Path, model, optimizer, step: int, cfg: TrainConfig, world: World) -> None:
    """A `torch.distributed.checkpoint` directory, written under a temporary name and renamed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(path.name + ".tmp")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process_dcp(world):
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if world.distributed:
        dist.barrier()
    if world.rank == 0:
        (tmp / TRAIN_STATE).write_text(json.dumps({"step": step, **_data_order_keys(cfg, world.world_size),
                                                          **_schedule(cfg)}) + "\n")
        old = path.with_name(path.name + ".old")
        if path.exists():  # set aside, not deleted, until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint saved: %s", path)
    if world.distributed:
        dist.barrier()


def load_checkpoint(path: Path, model, optimizer, step: int, world: World) -> None:
    """Restore weights and optimizer state in place from a checkpoint `resume_step` accepted at `step`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from pipeline.config import ConfigError

    model_sd, optim_sd = get_state_dict(model, optimizer)
    sd = {"model": model_sd, "optim": optim_sd}
    try:
        with _quiet_single_process_dcp(world):
            dcp.load(sd, checkpoint_id=str(path))
    except (Exception, CheckpointException) as exc:  # a missing or truncated .distcp file; dcp's own
        # CheckpointException derives from BaseException, not Exception
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--resume {path}: cannot load the checkpoint ({type(exc).__name__}: {first[:300]})") from None
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    log.info("resumed from %s at step %d", path, step)


def _gradient_sync(model: torch.nn.Module, enabled: bool):
    """Whether this backward reduces gradients across ranks: only a step's last micro-batch needs to."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not enabled:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


# Every batch packs other documents, so the document count (the length of `cu_seqlens`) and the longest
# document (`max_seqlen`, an int the varlen kernels take) change from step to step. Source names as
# Dynamo spells them, e.g. L['layout'].max_seqlen, or L['inputs'][1].max_seqlen through DDP.
LAYOUT_SOURCES = r".*\.(cu_seqlens|max_seqlen)$"


def compile_packed(module: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """`torch.compile(module)` whose first graph already takes any document layout.

    Left to itself, torch.compile builds the first graph for the first batch's exact layout, and the
    next batch, with other documents, throws it away and compiles again with the layout dynamic: a
    second full compile (tens of seconds for proxy-1b) inside the second step, which is the first step
    the throughput figures time. Named in `torch.compiler.config.dynamic_sources` (added to what the
    user set there), the layout is dynamic from the first graph on, the only one a run needs. Torch
    without that setting still gets there, after the one recompile.
    """
    config = getattr(torch.compiler, "config", None)
    if hasattr(config, "dynamic_sources"):
        sources = [s for s in config.dynamic_sources.split(",") if s]
        if LAYOUT_SOURCES not in sources:
            config.dynamic_sources = ",".join(sources + [LAYOUT_SOURCES])
    return torch.compile(module, **compile_kwargs)


def train_step(step_fn, model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[Batch],
               grad_clip: float, autocast=contextlib.nullcontext()) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `micro_batches`, gradients accumulated; returns (loss, grad norm) on the device.

    Each micro-batch's mean loss is weighted by its share of the step's targets, so the step computes
    exactly the loss and gradients of one batch of all their rows, while only one micro-batch's
    activations are alive at a time. Accumulating also spreads the optimizer and clipping (a
    bandwidth-bound pass over all weights) over more tokens. `step_fn` is the (possibly compiled)
    `model`; `model` is what DDP or FSDP2 wrapped. Nothing here waits for the device.
    """
    targets = [(b.labels != IGNORE_INDEX).sum() for b in micro_batches]
    total = torch.stack(targets).sum().clamp(min=1)
    loss = torch.zeros((), device=micro_batches[0].input_ids.device)
    for i, (batch, n) in enumerate(zip(micro_batches, targets)):
        with _gradient_sync(model, enabled=i == len(micro_batches) - 1), autocast:
            part = step_fn(batch.input_ids, batch.layout, batch.labels) * (n / total)
        part.backward()
        loss += part.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


def train(cfg: TrainConfig) -> dict:
    """Run the loop on this rank; every rank returns the same summary (losses are averaged)."""
    from mixing.reader import PackedShards
    from pipeline.config import ConfigError

    world = init_world()
    start = preflight(cfg, world.world_size)  # cheap; a launcher has run it already
    dataset = PackedShards(cfg.shards, rank=world.rank, world_size=world.world_size, verify=cfg.verify)
    manifest = dataset.manifest
    order = BatchOrder(len(dataset), cfg.batch_size * cfg.grad_accum, cfg.seed)

    try:
        backend = select_backend(world.device, cfg.attention)
    except ValueError as exc:
        raise ConfigError(f"--attention: {exc}") from None
    model_cfg = preset(cfg.preset, vocab_size=int(manifest["vocab_size"]))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    loss_chunk = cfg.loss_chunk if cfg.loss_chunk is not None else (0 if world.device.type == "cuda" else 4096)
    model = Transformer(model_cfg, backend=backend, loss_chunk=loss_chunk).to(world.device)
    flops_model = model
    model = _wrap(model, cfg, world)
    optimizer = _optimizer(model, cfg, world)
    if cfg.resume:
        load_checkpoint(Path(cfg.resume), model, optimizer, start, world)
        changes = schedule_changes(cfg) if world.rank == 0 else []
        if changes:
            log.warning("resuming with another schedule (%s): the losses will part from the uninterrupted "
                        "run's", ", ".join(changes))
    if order.batch_size > len(dataset) and world.rank == 0:
        log.warning("a step reads %d rows per process (--batch-size x --grad-accum) but rank 0 holds %d: rows "
                    "repeat within a step", order.batch_size, len(dataset))
    step_fn = compile_packed(model) if cfg.compile else model
    on_gpu = world.device.type == "cuda"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu and not cfg.fsdp
                else contextlib.nullcontext())
    if world.rank == 0:
        log.info("model %s: %.1fM parameters, vocab %d, attention %s, %s on %d x %s",
                 cfg.preset, flops_model.num_params() / 1e6, model_cfg.vocab_size, backend,
                 "FSDP2" if cfg.fsdp else ("DDP" if world.distributed else "single process"),
                 world.world_size, world.device.type)

    losses: list[float] = []
    meter = Throughput(world.world_size, cfg.peak_tflops, with_mfu=on_gpu)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        rows = [dataset[i] for i in order.indices(step)]
        micro_batches = [collate(rows[i:i + cfg.batch_size], int(manifest["eos_id"])).to(world.device)
                         for i in range(0, len(rows), cfg.batch_size)]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss, grad_norm = train_step(step_fn, model, optimizer, micro_batches, cfg.grad_clip, autocast)
        losses.append(_mean_across_ranks(float(loss), world))  # also synchronises the device
        # The first step pays for start-up and compilation: time from the second on (if there is one).
        rate = meter.add(sum(b.input_ids.numel() for b in micro_batches),
                         sum(flops_model.training_flops(b.layout) for b in micro_batches),
                         time.perf_counter() - t0, timed=step > start or cfg.steps - start == 1)
        if world.rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # DTensor (FSDP)
            log.info("step %d/%d loss %.4f lr %.2e grad_norm %.3f %s", step + 1, cfg.steps, losses[-1],
                     lr_at(cfg, step), float(norm), rate)
        done = step + 1
        if cfg.checkpoint_dir and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps):
            save_checkpoint(Path(cfg.checkpoint_dir) / f"step-{done}", model, optimizer, done, cfg, world)

    summary = {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "steps": len(losses),
        "tokens_per_s": round(meter.tokens_per_s, 1),
        "backend": backend,
        "world_size": world.world_size,
        "device": world.device.type,
        "parallelism": "fsdp2" if cfg.fsdp else ("ddp" if world.distributed else "none"),
        "losses": losses,
        "replicas_in_sync": _replicas_in_sync(model, world),
    }
    if on_gpu:
        summary["mfu"] = round(meter.mfu, 4)
    return summary


class Throughput:
    """Tokens/s over all ranks and MFU per GPU (a CPU has no meaningful peak), over the timed steps."""

    def __init__(self, world_size: int, peak_tflops: float, with_mfu: bool):
        self.world_size, self.peak, self.with_mfu = world_size, peak_tflops * 1e12, with_mfu
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0

    def add(self, rank_tokens: int, rank_flops: float, seconds: float, timed: bool) -> str:
        """Record one step of this rank; returns the step's rates for the log line."""
        if timed:
            self.tokens += rank_tokens * self.world_size
            self.flops += rank_flops
            self.seconds += seconds
        rates = f"tokens/s {rank_tokens * self.world_size / seconds:.0f}"
        return rates + (f" mfu {rank_flops / seconds / self.peak:.1%}" if self.with_mfu else "")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def mfu(self) -> float:
        return self.flops / self.seconds / self.peak


def loss_verdict(summary: dict) -> str:
    """What failed the smoke test, or "" when it passed: finite losses, and the last below the first."""
    bad = next((i for i, x in enumerate(summary["losses"]) if not math.isfinite(x)), None)
    if bad is not None:
        return f"the loss is {summary['losses'][bad]} at step {bad + 1} of {len(summary['losses'])} run"
    if not summary["last_loss"] < summary["first_loss"]:
        return (f"the loss did not fall ({summary['first_loss']:.4f} -> {summary['last_loss']:.4f} over "
                f"{len(summary['losses'])} steps)")
    return ""


def loss_fell(summary: dict) -> bool:
    return not loss_verdict(summary)


def _configure_worker_logging() -> None:
    """Processes started by a launcher begin with Python's default logging: show our INFO lines."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def train_and_leave(cfg: TrainConfig) -> dict:
    """`train`, then leave the process group (a torchrun or launcher rank that exits after this)."""
    summary = train(cfg)
    if dist.is_initialized():
        dist.destroy_process_group()
    return summary


def _elastic_entry(cfg_dict: dict) -> dict:
    _configure_worker_logging()
    return train_and_leave(TrainConfig(**cfg_dict))


def launch_local(cfg: TrainConfig, nproc: int) -> dict:
    """Start `nproc` processes on this host with torchrun's launcher (same env as `torchrun --standalone`)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from mixing.shards import ShardError
    from pipeline.config import ConfigError

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    # The launcher logs every failed rank's traceback; ChildFailedError carries the same, so it alone
    # is reported below (as one line for bad input, else with the ranks' tracebacks).
    launcher_log = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    level = launcher_log.level
    launcher_log.setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(config, _elastic_entry)(dataclasses.asdict(cfg))
    except ChildFailedError as exc:
        # A rank that met bad input (a shard failing its checksum when first opened) says so in one line,
        # as one process would; anything else keeps the launcher's report with every rank's traceback.
        failure = exc.get_first_failure()[1].message
        message = failure.get("message", "") if isinstance(failure, dict) else str(failure)
        for error in (ShardError, ConfigError):
            if message.startswith(f"{error.__name__}: "):
                raise error(message[len(error.__name__) + 2:]) from None
        raise
    finally:
        launcher_log.setLevel(level)
    return results[0]


def _ray_entry(cfg_dict: dict) -> None:
    import tempfile

    import ray.train

    _configure_worker_logging()
    summary = train(TrainConfig(**cfg_dict))
    # Ray Train 2.x keeps only metrics that come with a checkpoint: rank 0 attaches a small one.
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            Path(tmp, "summary.json").write_text(json.dumps(summary) + "\n")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(summary, checkpoint=checkpoint)


def launch_ray(cfg: TrainConfig, num_workers: int, address: Optional[str] = None) -> dict:
    """The same loop through Ray Train's TorchTrainer: one worker per GPU (or per CPU slot)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.config import RayConfig
    from pipeline.ray_session import ray_session

    # A local Ray needs one CPU beyond the workers' for Ray Train's controller.
    with ray_session(RayConfig(address=address, num_cpus=num_workers + 1), reads=[cfg.shards]):
        import ray

        use_gpu = ray.cluster_resources().get("GPU", 0) >= num_workers
        per_worker = {"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}
        scaling = ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=per_worker)
        storage = os.path.abspath(cfg.checkpoint_dir) if cfg.checkpoint_dir else None  # None: ~/ray_results
        trainer = TorchTrainer(_ray_entry, train_loop_config=dataclasses.asdict(cfg), scaling_config=scaling,
                               run_config=RunConfig(name="xdp-smoke-train", storage_path=storage))
        result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        return json.loads(Path(directory, "summary.json").read_text())
