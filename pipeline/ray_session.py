"""Start or join Ray for a job: the one place that decides which cluster a command uses.

Also `run_tasks`, the one loop that runs plain Ray tasks (not Ray Data) with a progress bar.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from typing import Iterator, Optional, Sequence

from pipeline.cluster_check import check_cluster
from pipeline.config import RayConfig

log = logging.getLogger(__name__)


def add_ray_args(p: argparse.ArgumentParser, config: bool = False) -> None:
    """`--address` and `--num-cpus`, the same on every command that runs on Ray. `config`: the
    command takes a job config, whose `ray` section they override."""
    first = "the config's ray.{}, else ".format
    p.add_argument("--address", help=f"Ray cluster to join (default: {first('address') if config else ''}"
                                     "$RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=_positive_int,
                   help=f"CPUs for a local Ray (default: {first('num_cpus') if config else ''}all)")


def with_ray_args(cfg: RayConfig, args: argparse.Namespace) -> RayConfig:
    """`cfg` with what `add_ray_args` parsed on top."""
    return dataclasses.replace(cfg, address=args.address or cfg.address, num_cpus=args.num_cpus or cfg.num_cpus)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


class RaySession:
    """What `ray_session` yields: lets a job hand its Ray back as soon as it needs no more tasks."""

    def __init__(self, owned: bool):
        self.owned = owned
        self._closing: Optional[threading.Thread] = None

    def release(self) -> None:
        """Shut down the Ray this session started, in a background thread, while the driver works on.

        For a job whose tail runs on the driver alone (BPE merges: 30 s at 150 MB): Ray's shutdown
        (about 1.3 s) and its daemons' housekeeping then overlap that work instead of adding to it.
        A Ray the session did not start is left alone; a second call does nothing.
        """
        if self.owned and self._closing is None:
            import ray

            self._closing = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
            self._closing.start()

    def _close(self) -> None:
        if self._closing is None:
            import ray

            ray.shutdown()
        else:
            self._closing.join()


def cluster_address(cfg: RayConfig) -> Optional[str]:
    """The cluster a session joins (`cfg.address`, else $RAY_ADDRESS); None: it starts a local Ray."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(cfg: Optional[RayConfig] = None, writes: Optional[str] = None,
                reads: Sequence[str] = ()) -> Iterator[RaySession]:
    """Join `cfg.address` / $RAY_ADDRESS, else start a local Ray; reuse one already initialized.

    On a joined cluster, first check that every node runs this xdp and sees the directory the job
    `writes` and the paths it `reads` (`pipeline.cluster_check`). Only a Ray started here is shut down
    on exit (or earlier, by `RaySession.release`), so tests and notebooks keep their own cluster.
    """
    import ray

    cfg = cfg or RayConfig()
    with data_context(cfg):
        if ray.is_initialized():
            yield RaySession(owned=False)
            return
        with _own_ray(cfg, writes, reads) as session:
            yield session


# Read by Ray Data's v2 `read_parquet` on the driver: the most uncompressed bytes one read task packs.
_PARQUET_READ_UNIT = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"


@contextlib.contextmanager
def data_context(cfg: RayConfig) -> Iterator[None]:
    """Ray Data settings for the session, restored on exit.

    * Block size `cfg.block_mb` MiB (None: Ray's): what one read or map task works on is a few blocks,
      so smaller blocks mean more, smaller tasks. v1 sizes its read batches by it; v2 packs read units
      by `_PARQUET_READ_UNIT`, set to the same size.
    * `read_parquet` on the reader `cfg.parquet_reader`. Ray 2.60's default, v2, starts 32 fresh
      footer-reading actors for every read: a fixed 3-5 s each on a 2-core node, and xdp reads its
      own few, block-sized files back about 20 times a job (bench/README.md). Older Rays have only v1.
    * v1 reads in as many tasks as the data has blocks (at least two per CPU), not Ray's 200: with
      fewer files than that it split each task's output into smaller blocks, and a split read does not
      fuse with the map after it, so every block went through the object store in between. v2 keeps
      Ray's 200 (its read-unit count hint), whatever an enclosing session set.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {name: getattr(ctx, name) for name in ("target_max_block_size", "use_datasource_v2",
                                                    "read_op_min_num_blocks") if hasattr(ctx, name)}
    env = {}
    if cfg.block_mb is not None:
        ctx.target_max_block_size = cfg.block_mb * 2**20
        env[_PARQUET_READ_UNIT] = str(cfg.block_mb * 2**20)
    if "use_datasource_v2" in saved:
        ctx.use_datasource_v2 = cfg.parquet_reader == "v2"
    if "read_op_min_num_blocks" in saved:
        from ray.data.context import DEFAULT_READ_OP_MIN_NUM_BLOCKS

        ctx.read_op_min_num_blocks = 1 if cfg.parquet_reader == "v1" else DEFAULT_READ_OP_MIN_NUM_BLOCKS
    try:
        with _environ(env):
            yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """This process's environment with `values` set, restored on exit."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Environment of every worker of a job with `ray.release_memory`. Arrow's default pool (mimalloc) keeps
# pages a task freed, and glibc raises its mmap threshold after each large free, so large buffers come
# from a heap that rarely shrinks: a worker grew by what earlier tasks left. Arrow on malloc with a fixed
# 1 MiB mmap threshold unmaps each large buffer when it is freed. Clean step of the 392 M-character job,
# largest worker: 1,806 MiB -> 969 MiB, 131 s -> 149 s (256 KiB: 910 MiB, 169 s; 4 MiB: 1,109 MiB, 144 s).
RELEASE_MEMORY_ENV = {
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(4 << 20),
}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (ConfigError) on an address no Ray can answer at: left to itself, `ray.init` retries
    an unreachable GCS for about 14 minutes, and a malformed one is a traceback."""
    from pipeline.config import ConfigError

    if address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        if importlib.util.find_spec("grpc") is None:  # what `ray[client]` adds
            raise ConfigError(f"Ray address {address}: Ray Client needs `pip install 'ray[client]'`; or run xdp on "
                              "a cluster node with the GCS address (HEAD:6379) or `auto`")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT (the head's GCS, e.g. head:6379), "
                          "ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"Ray address {address}: nothing answers there ({exc.strerror or exc}); is the head "
                          "node up, and is this its GCS port?") from None


@contextlib.contextmanager
def _own_ray(cfg: RayConfig, writes: Optional[str], reads: Sequence[str]) -> Iterator[RaySession]:
    """Join the cluster `cfg` names, or start a local Ray; shut down on exit.

    While the session lasts, stdout goes to stderr: Ray's driver prints its warnings ("N PYTHON
    worker processes have been started") to stdout, which would corrupt a command's `--json`; every
    command prints its results after its session ends."""
    with contextlib.redirect_stdout(sys.stderr), _start_ray(cfg) as address, _terminate_cleanly():
        session = RaySession(owned=True)
        try:
            if address:
                check_cluster(writes, reads)
            yield session
        finally:
            session._close()


class Terminated(BaseException):
    """SIGTERM arrived while the job ran on Ray: ends it like Ctrl-C (a BaseException, so no handler of
    bad records swallows it), with a message and exit 143."""


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM as an exception in the driver, so the session shuts its Ray down and the CLI says how to
    resume. Installed after `ray.init`, which sets handlers of its own (exit 15 and a C++ stack dump)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _start_ray(cfg: RayConfig) -> Iterator[Optional[str]]:
    """`ray.init` for `cfg`; yields the cluster address joined (None: a local Ray was started)."""
    import ray

    address = cluster_address(cfg)
    kwargs = dict(log_to_driver=False, configure_logging=False, include_dashboard=False)
    worker_env = RELEASE_MEMORY_ENV if cfg.release_memory else {}
    if address:
        check_reachable(address)
        log.info("joining Ray cluster at %s", address)
        if worker_env:  # the job's runtime env: Ray sets it in every worker it starts for this job
            kwargs["runtime_env"] = {"env_vars": dict(worker_env)}
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    else:
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory is not None:
            kwargs["object_store_memory"] = cfg.object_store_memory
        if cfg.recycle_workers:
            # Ray keeps up to num_cpus idle workers alive; a worker that ran many tasks holds memory
            # earlier tasks left behind, which gc and Arrow's release_unused do not return (measured:
            # 2.6 GB at the end of the 392 M-character job, 1.7 GB with this). With no idle workers
            # kept, one idle for a second exits.
            kwargs["_system_config"] = {"num_workers_soft_limit": 0}
        log.info("starting a local Ray (num_cpus=%s)", cfg.num_cpus or os.cpu_count())
        # The raylet inherits this environment and passes it on to every worker: cheaper than a runtime
        # env, which made each worker start wait for Ray's runtime-env agent (the demo: 61 s -> 80 s).
        with _environ(worker_env):
            ray.init(address="local", **kwargs)  # "local": never silently join another Ray on this host
    yield address


def lost_resources(exc: BaseException) -> bool:
    """Whether `exc` is, or wraps, Ray losing a node, worker, actor or object (not a bug in a stage).

    Ray Data sometimes delivers such a failure as an exception it could not deserialize, with the
    original only in the text; for Ray's own exceptions the text is searched for those class names.
    """
    import ray.exceptions as rex

    kinds = (rex.NodeDiedError, rex.ActorDiedError, rex.ActorUnavailableError, rex.WorkerCrashedError,
             rex.ObjectLostError, rex.OwnerDiedError, rex.LocalRayletDiedError)
    names = tuple(f"{k.__name__}:" for k in kinds)
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kinds) or (isinstance(e, rex.RayError) and any(n in str(e) for n in names)):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return False


def cluster_cpus() -> int:
    """CPUs of the Ray cluster this process is connected to (at least 1): what task counts scale with."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_tasks(fn, args: list[tuple], desc: str, unit: str = "part") -> list:
    """Run one Ray task per argument tuple, with a progress bar; results in argument order."""
    import ray
    from tqdm import tqdm

    refs = [fn.remote(*a) for a in args]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit=unit, leave=False) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[index[ref]] = ray.get(ref)
                bar.update(1)
    return results
