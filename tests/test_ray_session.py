"""`ray_session`: the block size and Parquet reader settings reach Ray Data and are undone afterwards;
the memory setting reaches every worker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import RayConfig
from pipeline.ray_session import _PARQUET_READ_UNIT, RELEASE_MEMORY_ENV, ray_session

REPO = Path(__file__).resolve().parents[1]


def _blocks(ray) -> list[int]:
    """Rows per block of one map task's 8 MB output (10 KB rows): Ray Data splits it at the block size."""
    rows = pa.table({"text": ["x" * 10_000] * 800})
    ds = ray.data.range(1, override_num_blocks=1).map_batches(lambda _: rows, batch_format="pyarrow")
    return [b.num_rows for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]


def test_block_mb_bounds_blocks_and_is_restored(ray_local):
    from ray.data import DataContext

    ctx = DataContext.get_current()
    default_size = ctx.target_max_block_size
    whole = _blocks(ray_local)
    with ray_session(RayConfig(block_mb=1)):
        assert ctx.target_max_block_size == 2**20
        small = _blocks(ray_local)
    assert sum(whole) == sum(small) == 800
    assert max(whole) > 200 and max(small) <= 200  # 1 MiB blocks: about 100 rows
    assert ctx.target_max_block_size == default_size


def test_parquet_reader_is_set_for_the_session_and_restored(ray_local, tmp_path):
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.use_datasource_v2, ctx.read_op_min_num_blocks, os.environ.get(_PARQUET_READ_UNIT)
    pq.write_table(pa.table({"id": [1, 2, 3]}), tmp_path / "a.parquet")
    for reader, v2 in (("v1", False), ("v2", True)):
        with ray_session(RayConfig(parquet_reader=reader, block_mb=8)):
            assert ctx.use_datasource_v2 is v2
            assert ctx.read_op_min_num_blocks == (200 if v2 else 1)  # v1: no split reads left unfused
            assert os.environ[_PARQUET_READ_UNIT] == str(8 * 2**20)  # v2's read unit: the block size
            assert sorted(r["id"] for r in ray_local.data.read_parquet(str(tmp_path)).take_all()) == [1, 2, 3]
    assert (ctx.use_datasource_v2, ctx.read_op_min_num_blocks, os.environ.get(_PARQUET_READ_UNIT)) == before


def test_release_leaves_a_borrowed_ray_running(ray_local):
    with ray_session() as session:
        session.release()
        assert not session.owned and session._closing is None  # no shutdown thread to race with
        assert ray_local.get(ray_local.put(1)) == 1
    assert ray_local.is_initialized()


_RELEASE_PROBE = """
import json, threading
import ray
from pipeline.config import RayConfig
from pipeline.ray_session import ray_session

with ray_session(RayConfig(num_cpus=1, object_store_memory=80 * 2**20)) as session:
    ray.get(ray.remote(lambda: 1).remote())
    session.release()
    session.release()  # a second call does nothing
    # the driver goes on while Ray shuts down in the background
    closing = [t.name for t in threading.enumerate() if t.name == "ray-shutdown"]
    session._closing.join(timeout=60)
    inside = ray.is_initialized()
print(json.dumps([closing, inside, ray.is_initialized()]))
"""


def test_release_shuts_an_owned_ray_down_in_the_background():
    out = subprocess.run([sys.executable, "-c", _RELEASE_PROBE], capture_output=True, text=True,
                         timeout=180, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    closing, inside, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert closing == ["ray-shutdown"] and inside is False and after is False


_WORKER_MEMORY_PROBE = """
import json, os, sys
import ray
from pipeline.config import RayConfig
from pipeline.ray_session import ray_session

def probe():
    import os
    import pyarrow as pa
    return [pa.default_memory_pool().backend_name, os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            os.environ.get("TOKENIZERS_PARALLELISM")]

mode = sys.argv[1]  # local, cluster (a job joining a running Ray) or off
cfg = RayConfig(num_cpus=1, object_store_memory=80 * 2**20, release_memory=mode != "off")
cluster = None
if mode == "cluster":
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20})
    cfg.address = cluster.address
with ray_session(cfg):
    plain = ray.get(ray.remote(probe).remote())
    # a task with env_vars of its own: the job's variables must still apply to it
    own = ray.get(ray.remote(probe).options(
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}).remote())
    driver = os.environ.get("MALLOC_MMAP_THRESHOLD_")  # the driver's own environment is left as it was
if cluster:
    cluster.shutdown()
print(json.dumps([plain, own, driver]))
"""


@pytest.mark.parametrize("mode", ["local", "cluster", "off"])
def test_release_memory_sets_the_allocator_of_every_worker(mode):
    # its own process: a Ray already started by another test would be reused, without the setting
    out = subprocess.run([sys.executable, "-c", _WORKER_MEMORY_PROBE, mode], capture_output=True, text=True,
                         timeout=180, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    plain, own, driver = json.loads(out.stdout.strip().splitlines()[-1])
    assert own[2] == "false" and driver is None
    if mode != "off":
        threshold = RELEASE_MEMORY_ENV["MALLOC_MMAP_THRESHOLD_"]
        assert plain == ["system", threshold, None]
        assert own == ["system", threshold, "false"]
    else:
        assert plain[0] != "system" and plain[1] is None and own[:2] == plain[:2]


@pytest.mark.parametrize("command", ["clean", "run", "plan", "mix", "demo", "dedup", "train-tokenizer", "stats"])
def test_every_ray_command_takes_the_same_ray_flags(command):
    """Every command that runs on Ray takes --address and --num-cpus."""
    from pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    flags = {f for a in sub._actions for f in a.option_strings}
    assert {"--address", "--num-cpus"} <= flags


def test_ray_flags_override_only_what_they_name():
    import argparse

    from pipeline.ray_session import add_ray_args, with_ray_args

    p = argparse.ArgumentParser()
    add_ray_args(p, config=True)
    cfg = RayConfig(address="ray://head:10001", num_cpus=8, object_store_memory=10**9)
    assert with_ray_args(cfg, p.parse_args([])) == cfg
    assert with_ray_args(cfg, p.parse_args(["--num-cpus", "2"])) == RayConfig(
        address="ray://head:10001", num_cpus=2, object_store_memory=10**9)
    assert with_ray_args(cfg, p.parse_args(["--address", "auto"])).address == "auto"
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            p.parse_args(["--num-cpus", bad])


_STDOUT_AND_SIGTERM_PROBE = """
import os, signal
import ray
from pipeline.config import RayConfig
from pipeline.ray_session import Terminated, ray_session

try:
    with ray_session(RayConfig(num_cpus=1, object_store_memory=80 * 2**20)):
        print("said inside the session")
        os.kill(os.getpid(), signal.SIGTERM)
        ray.get(ray.remote(lambda: 1).remote())
except Terminated:
    print("terminated; ray up:", ray.is_initialized())
"""


def test_an_owned_session_keeps_stdout_clean_and_turns_sigterm_into_an_exception():
    """Ray prints its driver warnings to stdout (a `--json` result would not parse), and its SIGTERM
    handler exits 15 with a C++ stack; inside a session xdp owns, stdout goes to stderr and SIGTERM
    raises Terminated after Ray is shut down."""
    out = subprocess.run([sys.executable, "-c", _STDOUT_AND_SIGTERM_PROBE], capture_output=True, text=True,
                         timeout=180, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["terminated; ray up: False"]
    assert "said inside the session" in out.stderr


@pytest.mark.parametrize("address, message", [
    ("notanaddress", "expected HOST:PORT"),
    ("127.0.0.1:notaport", "expected HOST:PORT"),
    ("127.0.0.1:{closed}", "nothing answers there"),
    ("no-such-host.invalid:6379", "nothing answers there"),
])
def test_an_address_no_ray_answers_at_fails_fast(address, message):
    """`ray.init` would retry an unreachable address for about 14 minutes."""
    import socket
    import time

    from pipeline.config import ConfigError
    from pipeline.ray_session import check_reachable

    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConfigError, match=message):
        check_reachable(address.format(closed=closed), timeout=2)
    assert time.monotonic() - started < 30
    with socket.create_server(("127.0.0.1", 0)) as server:  # something listening: passes
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
