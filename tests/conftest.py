"""Shared test fixtures: a small bounded local Ray, and the path to ../shared test data."""
from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory) -> Path:
    """`xdp demo` run once per session (two workers): the end-to-end tests read its outputs and the fault
    tests compare their reruns against its bytes."""
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", "--output", str(out), "--train-steps", "0",
                           "--num-cpus", "2"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out
