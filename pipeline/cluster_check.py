"""Before a job on a joined cluster: every node must run this xdp and see the job's files.

Stages run as Ray tasks on every node. A node without xdp fails the first task sent to it, deep in a
Ray Data traceback. Worse, a node that does not see the output directory writes its share of
`<output>/_work` to its own disk, where the grouping steps (dedup partitions, the mix's token cache)
running on other nodes never find it, and documents go missing; a node that does not see an input
quarantines its files as unreadable. One probe task per node finds all three in about a second, before
any work, and names the nodes.
"""
from __future__ import annotations

import logging
import os
import uuid
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0


def xdp_version() -> Optional[str]:
    try:
        return metadata.version("xdp")
    except metadata.PackageNotFoundError:  # run from a source tree
        return None


def probe_nodes(paths: Sequence[str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, dict]:
    """{node: {"version", "error", "missing"}} for every alive node: the xdp version it imports (or why
    it cannot), and which of `paths` it does not see. A node that does not answer in time is left out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe(paths):  # nested, so pickled by value: it must run even where xdp does not import
        import importlib
        import os
        from importlib import metadata
        try:
            for module in ("pipeline.clean_job", "tokenizer_training.job", "mixing.job", "model.train"):
                importlib.import_module(module)
            version, error = metadata.version("xdp"), None
        except metadata.PackageNotFoundError:
            version, error = None, None
        except Exception as exc:  # noqa: BLE001 -- any import failure is the answer
            version, error = None, f"{type(exc).__name__}: {exc}"
        return {"version": version, "error": error, "missing": [p for p in paths if not os.path.exists(p)]}

    remote = ray.remote(num_cpus=0, max_retries=0)(probe)
    refs = {}
    for node in ray.nodes():
        if node["Alive"]:
            name = f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            refs[remote.options(scheduling_strategy=strategy).remote(list(paths))] = name
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in pending:
        log.warning("cluster check: %s did not answer in %.0f s; not checked", refs[ref], timeout_s)
    results = {}
    for ref in done:
        try:
            results[refs[ref]] = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 -- e.g. the node died meanwhile
            results[refs[ref]] = {"version": None, "error": str(exc).strip().splitlines()[-1], "missing": []}
    return results


def node_problems(results: dict[str, dict], driver_version: Optional[str], labels: dict[str, str]) -> list[str]:
    """One line per thing a node lacks; `labels` names each probed path for the message."""
    problems = []
    for node, r in sorted(results.items()):
        if r["error"]:
            problems.append(f"{node} cannot import xdp ({r['error']})")
        elif r["version"] != driver_version:
            problems.append(f"{node} runs xdp {r['version']}, the driver {driver_version}")
        problems += [f"{node} does not see {labels.get(p, p)}" for p in r["missing"]]
    return problems


def check_cluster(writes: Optional[str] = None, reads: Sequence[str] = ()) -> None:
    """Raise ConfigError unless every node imports the driver's xdp, sees the directory `writes` (by a
    marker file written there now) and the paths `reads`."""
    labels = {os.path.abspath(p): f"input {p}" for p in reads}  # a worker's working directory is not ours
    marker = None
    if writes:
        Path(writes).mkdir(parents=True, exist_ok=True)
        marker = os.path.join(os.path.abspath(writes), f".xdp-cluster-check-{uuid.uuid4().hex}")
        Path(marker).touch()
        labels[marker] = f"the output directory {writes}"
    try:
        results = probe_nodes(list(labels))
    finally:
        if marker:
            Path(marker).unlink(missing_ok=True)
    problems = node_problems(results, xdp_version(), labels)
    if problems:
        raise ConfigError("cluster check: " + "; ".join(problems) + ". Every node needs the same xdp install "
                          "and the job's inputs and output on storage it mounts at the same path (see README, "
                          "Running on a Ray cluster)")
    log.info("cluster check: %d nodes run xdp %s and see the job's files", len(results), xdp_version())
