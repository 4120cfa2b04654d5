"""Joining a cluster first checks that every node runs this xdp and sees the job's files."""
from __future__ import annotations

import pytest

from pipeline.cluster_check import node_problems, xdp_version
from pipeline.config import ConfigError, RayConfig
from pipeline.ray_session import ray_session


def test_each_missing_thing_is_named_with_its_node():
    results = {"10.0.0.2 (node a)": {"version": None, "error": "ModuleNotFoundError: No module named 'pipeline'",
                                     "missing": []},
               "10.0.0.3 (node b)": {"version": "0.0.9", "error": None, "missing": ["/data/out/.marker"]},
               "10.0.0.4 (node c)": {"version": "0.1.0", "error": None, "missing": []}}
    assert node_problems(results, "0.1.0", {"/data/out/.marker": "the output directory /data/out"}) == [
        "10.0.0.2 (node a) cannot import xdp (ModuleNotFoundError: No module named 'pipeline')",
        "10.0.0.3 (node b) runs xdp 0.0.9, the driver 0.1.0",
        "10.0.0.3 (node b) does not see the output directory /data/out"]


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
    assert f"2 nodes run xdp {xdp_version()}" in caplog.text
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
