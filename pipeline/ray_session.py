"""Start or join Ray for a job: the one place that decides which cluster a command uses."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional

from pipeline.config import RayConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(cfg: Optional[RayConfig] = None) -> Iterator[None]:
    """Join `cfg.address` / $RAY_ADDRESS, else start a local Ray; reuse one already initialized.

    Only a Ray started here is shut down on exit, so tests and notebooks keep their own cluster.
    """
    import ray

    cfg = cfg or RayConfig()
    with _block_size(cfg.block_mb):
        if ray.is_initialized():
            yield
            return
        with _own_ray(cfg):
            yield


# Read by Ray Data's `read_parquet` on the driver: the most uncompressed bytes one read task packs.
_PARQUET_READ_UNIT = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"


@contextlib.contextmanager
def _block_size(block_mb: Optional[int]) -> Iterator[None]:
    """Set Ray Data's block size and Parquet read unit to `block_mb` MiB for the session (None: Ray's).

    What one read or map task works on is a few blocks: smaller blocks mean more, smaller tasks.
    """
    if block_mb is None:
        yield
        return
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.target_max_block_size, os.environ.get(_PARQUET_READ_UNIT)
    ctx.target_max_block_size = block_mb * 2**20
    os.environ[_PARQUET_READ_UNIT] = str(block_mb * 2**20)
    try:
        yield
    finally:
        ctx.target_max_block_size = saved[0]
        if saved[1] is None:
            os.environ.pop(_PARQUET_READ_UNIT, None)
        else:
            os.environ[_PARQUET_READ_UNIT] = saved[1]


@contextlib.contextmanager
def _own_ray(cfg: RayConfig) -> Iterator[None]:
    """Join the cluster `cfg` names, or start a local Ray; shut down on exit."""
    import ray

    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(log_to_driver=False, configure_logging=False, include_dashboard=False)
    if address:
        log.info("joining Ray cluster at %s", address)
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
        ray.init(address="local", **kwargs)  # "local": never silently join another Ray on this host
    try:
        yield
    finally:
        ray.shutdown()


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
