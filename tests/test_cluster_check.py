"""Joining a cluster first checks that every node runs this xdp and sees the job's files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cluster_check import CODE_PACKAGES, code_digests, code_id, install_fingerprint, node_problems
from pipeline.config import ConfigError, RayConfig
from pipeline.ray_session import ray_session


def _install(xdp="0.1.0", pyarrow="18.1.0", **code):
    return {"versions": {"xdp": xdp, "pyarrow": pyarrow}, "code": {"pipeline/read.py": "aa", **code}}


def test_each_missing_or_different_thing_is_named_with_its_node():
    results = {"10.0.0.2 (node a)": {"install": None, "error": "ModuleNotFoundError: No module named 'pipeline'",
                                     "missing": []},
               "10.0.0.3 (node b)": {"install": _install(xdp="0.0.9"), "error": None,
                                     "missing": ["/data/out/.marker"]},
               "10.0.0.4 (node c)": {"install": _install(), "error": None, "missing": []},
               "10.0.0.5 (node d)": {"install": _install(pyarrow="17.0.0"), "error": None, "missing": []}}
    assert node_problems(results, _install(), {"/data/out/.marker": "the output directory /data/out"}) == [
        "10.0.0.2 (node a) cannot import xdp (ModuleNotFoundError: No module named 'pipeline')",
        "10.0.0.3 (node b) runs xdp 0.0.9, the driver 0.1.0",
        "10.0.0.3 (node b) does not see the output directory /data/out",
        "10.0.0.5 (node d) has pyarrow 17.0.0, the driver 18.1.0"]


def test_a_node_with_other_code_under_the_same_version_names_the_files():
    driver = _install(**{f"model/m{i}.py": "bb" for i in range(7)})
    node = _install(**{"pipeline/read.py": "cc", "pipeline/extra.py": "dd",
                       **{f"model/m{i}.py": "ee" for i in range(1, 7)}})
    assert node_problems({"n1": {"install": node, "error": None, "missing": []}}, driver, {}) == [
        "n1 runs other xdp code than the driver (9 files differ: model/m0.py, model/m1.py, model/m2.py, "
        "model/m3.py, model/m4.py and 4 more)"]


def test_code_digests_cover_the_code_and_its_tables_and_see_an_edited_file(tmp_path):
    ours = code_digests()
    assert {"pipeline/read.py", "model/train.py", "mixing/ratios/xverse65b.yaml",
            "pipeline/resources/langid_lid176.json"} <= ours.keys()
    assert not [f for f in ours if f.startswith("pipeline/demo/") or "__pycache__" in f]
    # The same packages elsewhere, one file edited: a process importing that copy differs in that file.
    for package in CODE_PACKAGES:
        shutil.copytree(Path(__import__(package).__file__).parent, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "mixing" / "packing.py", "a") as f:
        f.write("# edited on one node\n")
    out = subprocess.run([sys.executable, "-c", "import json; from pipeline.cluster_check import code_digests; "
                          "print(json.dumps(code_digests()))"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, check=True).stdout
    theirs = json.loads(out)
    assert theirs.keys() == ours.keys()
    assert [f for f in ours if ours[f] != theirs[f]] == ["mixing/packing.py"]


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 << 20,
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 << 20)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def test_a_joined_cluster_whose_nodes_see_the_files_passes(two_nodes, tmp_path, caplog, monkeypatch):
    import ray

    (tmp_path / "in.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)  # relative paths are the driver's: workers run elsewhere
    with caplog.at_level("INFO", logger="pipeline.cluster_check"):
        with ray_session(RayConfig(address=two_nodes), writes="out", reads=["in.jsonl"]):
            assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    install = install_fingerprint()
    assert f"2 nodes run xdp {install['versions']['xdp']} (code {code_id(install['code'])})" in caplog.text
    assert list((tmp_path / "out").iterdir()) == []  # the marker is gone
    assert not ray.is_initialized()


def test_a_path_the_nodes_do_not_see_stops_the_job_before_any_work(two_nodes, tmp_path):
    import ray

    missing = str(tmp_path / "only-on-the-head" / "in.jsonl")
    with pytest.raises(ConfigError, match=r"cluster check: .*\(node \w+\) does not see input .*only-on-the-head.*; "
                                          r".*\(node \w+\) does not see input .*only-on-the-head"):
        with ray_session(RayConfig(address=two_nodes), reads=[missing]):
            pytest.fail("the job ran")
    assert not ray.is_initialized()  # the session it started is shut down


def test_a_local_ray_is_not_checked(tmp_path):
    import ray

    with ray_session(RayConfig(num_cpus=1, object_store_memory=100 << 20), reads=[str(tmp_path / "absent")]):
        assert ray.is_initialized()
    assert not ray.is_initialized()


def test_a_node_importing_edited_code_stops_the_job(tmp_path, monkeypatch):
    """A real node whose workers import a copy of xdp with one file edited (as a per-node checkout at
    another commit would) is refused, and the message names the file."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.chdir(tmp_path)  # Ray puts the driver's directory first on workers' paths: not a checkout

    for package in CODE_PACKAGES:
        shutil.copytree(Path(__import__(package).__file__).parent, tmp_path / "copy" / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "copy" / "pipeline" / "normalize.py", "a") as f:
        f.write("# edited on one node\n")
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 << 20,
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 << 20,
                         env_vars={"PYTHONPATH": str(tmp_path / "copy")})
        cluster.wait_for_nodes()
        with pytest.raises(ConfigError, match=r"cluster check: [^;]*\(node \w+\) runs other xdp code than the "
                                              r"driver \(1 files differ: pipeline/normalize\.py\)\. Every node"):
            with ray_session(RayConfig(address=cluster.address)):
                pytest.fail("the job ran")
    finally:
        ray.shutdown()
        cluster.shutdown()
