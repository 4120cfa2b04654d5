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
    if ray.is_initialized():
        yield
        return
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
