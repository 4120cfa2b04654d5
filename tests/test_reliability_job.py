"""`xdp run` under faults, as a user would meet them, on the bundled demo corpus.

One undisturbed run is the reference; every other run must reproduce its bytes (cleaned data,
quarantine, duplicates, stats, tokenizer, shards, manifest, report):
* with 1 and 4 workers instead of 2, and with the inputs listed in reverse order;
* after the driver is SIGKILLed mid-clean and again mid-mix, by rerunning the same command;
* on a two-node `ray.cluster_utils.Cluster` whose worker node is killed mid-job.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "pipeline" / "demo"
RESULTS = ("cleaned", "quarantine", "duplicates", "stats.json", "tokenizer", "shards", "report")
RUN_VARYING = {"training_run.json"}  # times and peak memory


def _config(tmp: Path, reverse: bool = False, **changes) -> Path:
    data = yaml.safe_load((DEMO / "demo.yaml").read_text())
    for spec in data["inputs"]:
        spec["path"] = str(DEMO / spec["path"])
    if reverse:
        data["inputs"].reverse()
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    path = tmp / f"job-{os.urandom(4).hex()}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _digests(out: Path) -> dict[str, str]:
    files = [p for name in RESULTS for p in ([out / name] if (out / name).is_file() else (out / name).rglob("*"))
             if p.is_file() and p.name not in RUN_VARYING]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def _xdp_run(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    # Logs to a file, not a pipe: Ray Data's progress lines would fill a pipe nobody reads mid-run.
    log = out.parent / f"{out.name}-{os.urandom(4).hex()}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config", str(config),
                                 "--output", str(out), *extra], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    proc.log = log
    return proc


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process under it (the local Ray it started), as a dead host would."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)  # no Ray left running for the rest of the session
        raise
    return proc.returncode, proc.log.read_text(errors="replace")


def _kill_when(proc: subprocess.Popen, marker: Path, timeout: float = 600) -> None:
    """Kill the job's process tree as soon as `marker` exists."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the job ended before {marker.name} appeared: {proc.log.read_text()[-3000:]}"
        if time.monotonic() > deadline:
            _kill_tree(proc)
            raise AssertionError(f"{marker} never appeared")
        time.sleep(0.05)
    _kill_tree(proc)


@pytest.fixture(scope="module")
def reference(demo_output, tmp_path_factory):
    """The undisturbed run: `xdp demo`'s, which is a job of this config with two workers."""
    config = _config(tmp_path_factory.mktemp("reference"))
    digests = _digests(demo_output)
    assert any(name.startswith("shards/shard-") for name in digests) and "stats.json" in digests
    return config, demo_output, digests


def test_timings_hold_the_driver_peak_of_each_step(reference):
    _, out, _ = reference
    peaks = json.loads((out / "timings.json").read_text())["driver_peak_rss_bytes"]
    assert set(peaks) == {"clean", "tokenizer", "mix"}
    assert all(isinstance(v, int) and 50 * 2**20 < v < 16 * 2**30 for v in peaks.values())


@pytest.mark.parametrize("workers, reverse", [(1, False), (4, True)], ids=["1-worker", "4-workers-reversed-inputs"])
def test_same_bytes_for_any_worker_count_and_input_order(reference, tmp_path, workers, reverse):
    _, _, expected = reference
    rc, err = _finish(_xdp_run(_config(tmp_path, reverse=reverse), tmp_path / "out", "--num-cpus", str(workers)))
    assert rc == 0, err[-4000:]
    assert _digests(tmp_path / "out") == expected


def test_killed_driver_resumes_to_the_same_bytes(reference, tmp_path):
    config, _, expected = reference
    out = tmp_path / "out"
    _kill_when(_xdp_run(config, out, "--num-cpus", "2"), out / "_work" / "clean" / "labelled._done")
    assert not (out / "cleaned").exists()  # killed mid-clean: nothing published yet

    second = _xdp_run(config, out, "--num-cpus", "2")
    _kill_when(second, out / "_work" / "mix" / "tokens._done")
    assert (out / "_job" / "tokenizer.done.json").exists() and not (out / "_job" / "mix.done.json").exists()

    rc, err = _finish(_xdp_run(config, out, "--num-cpus", "2"))
    assert rc == 0, err[-4000:]
    assert "clean: completed by an earlier run" in err and "tokenizer: completed by an earlier run" in err
    assert "reusing the token cache" in err
    assert _digests(out) == expected
    assert not (out / "_work" / "mix").exists()  # scratch removed once the step completed


def test_second_run_skips_everything_and_changed_config_is_refused(reference, tmp_path):
    config, out, expected = reference
    rc, err = _finish(_xdp_run(config, out, "--num-cpus", "1"), timeout=300)
    assert rc == 0, err[-4000:]
    assert all(f"{step}: completed by an earlier run" in err for step in ("clean", "tokenizer", "mix"))
    assert _digests(out) == expected

    changed = _config(tmp_path, dedup={"threshold": 0.7})
    rc, err = _finish(_xdp_run(changed, out), timeout=300)
    assert rc == 2
    assert "dedup.threshold: 0.8 -> 0.7" in err and "--overwrite" in err
    assert _digests(out) == expected  # refused before touching anything


def test_lost_worker_node_gives_the_same_bytes(reference, tmp_path):
    from ray.cluster_utils import Cluster

    config, _, expected = reference
    out = tmp_path / "out"
    node = dict(num_cpus=1, object_store_memory=200 * 2**20)
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        worker = cluster.add_node(**node)
        cluster.wait_for_nodes()
        job = _xdp_run(config, out, "--address", cluster.address)
        marker = out / "_work" / "clean" / "read._done"
        deadline = time.monotonic() + 600
        while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not marker.exists() or job.poll() is not None:
            _kill_tree(job)
            pytest.fail(f"no worker lost mid-job: {job.log.read_text()[-3000:]}")
        cluster.remove_node(worker, allow_graceful=False)  # the worker's raylet and its processes die
        rc, err = _finish(job)
        if rc != 0:  # stopped with a clear error: the rerun resumes from what was completed
            assert rc == 3 and "rerun the same command to resume" in err, err[-4000:]
            cluster.add_node(**node)
            rc, err = _finish(_xdp_run(config, out, "--address", cluster.address))
        assert rc == 0, err[-4000:]
    finally:
        cluster.shutdown()
    assert _digests(out) == expected
