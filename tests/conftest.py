"""Shared test fixtures: a small bounded local Ray, and the path to ../shared test data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()

# Ray on a 2-core CI box: small object store, no dashboard, quiet.
# address="local": always a fresh local Ray, never one another process left running on the machine.
RAY_TEST_KWARGS = dict(address="local", num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
                       log_to_driver=False, configure_logging=False)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the tests of one module, with the Ray Data settings of `ray_session`."""
    import ray

    from pipeline.config import RayConfig
    from pipeline.ray_session import data_context

    if ray.is_initialized():
        ray.shutdown()
    ray.init(**RAY_TEST_KWARGS)
    with data_context(RayConfig()):
        yield ray
    ray.shutdown()
