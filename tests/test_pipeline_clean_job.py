"""The whole clean job on Ray: accounting, quarantine, dedup, and the same bytes on one node and on two."""
from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.clean_job import run_clean
from pipeline.config import config_from_dict
from tests.conftest import RAY_TEST_KWARGS

pytestmark = pytest.mark.slow


def _lid_sentences(shared: Path, per_lang: int = 12) -> list[tuple[str, str]]:
    by_lang: dict[str, list[str]] = {}
    with gzip.open(shared / "corpus" / "lid_dev.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["lang"] in ("en", "de", "fr", "zh", "ru", "ja") and len(by_lang.get(rec["lang"], [])) < per_lang * 3:
                by_lang.setdefault(rec["lang"], []).append(rec["text"])
    docs = []
    for lang, sents in sorted(by_lang.items()):
        for i in range(per_lang):
            docs.append((lang, " ".join(sents[i * 3:(i + 1) * 3])))
    return docs


def _write_corpus(root: Path, shared: Path) -> dict:
    rng = random.Random(7)
    docs = _lid_sentences(shared)
    web = [{"id": f"w{i:03d}", "text": text} for i, (_, text) in enumerate(docs)]
    exact = [{"id": f"x{i:03d}", "text": web[i]["text"]} for i in range(0, 10, 2)]  # 5 exact copies
    longest = max(web, key=lambda d: len(d["text"].split()))  # a long space-separated document
    words = longest["text"].split()
    assert len(words) > 40
    near = [{"id": "z000", "text": " ".join(words[:-1] + ["changed"])}]  # Jaccard ~0.97 on 5-grams
    # An exact copy of the near duplicate: exact dedup keeps z000, which near dedup then removes.
    exact.append({"id": "z001", "text": near[0]["text"]})
    rng.shuffle(web)
    (root / "web.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in web + exact + near) + "\n",
                                    encoding="utf-8")
    # A mirror whose file name (relative to its own input) is web.jsonl too, holding the same record at
    # the same line: only names that tell the two files apart let exact dedup see the copy.
    (root / "mirror").mkdir()
    (root / "mirror" / "web.jsonl").write_text(json.dumps(web[0], ensure_ascii=False) + "\n", encoding="utf-8")
    bad = [b'{"id": "b1", "text": ', b'{"id": "b2", "text": 5}', b'{"id": "b3"}', b'\xff\xfe{"id": "b4"}']
    (root / "bad.jsonl.gz").write_bytes(gzip.compress(b"\n".join(bad) + b"\n", mtime=0))
    code = [{"id": f"c{i}", "text": f"def f{i}(x):\n    return x * {i} + {i * i}\n", "path": f"src/m{i}.py"}
            for i in range(6)]
    code.append({"id": "c99", "text": code[0]["text"], "path": "vendor/m0.py"})  # exact duplicate file
    (root / "code.jsonl").write_text("\n".join(json.dumps(r) for r in code) + "\n")
    # Another source reusing ids that dedup removes elsewhere, with unrelated texts: must be kept.
    collide = [{"id": "z000", "text": "How do I reset my password? Open the settings page, choose the account tab "
                                      "and follow the link that the service sends to your registered address."},
               {"id": "x000", "text": "Why does the printer stop after every page? Its driver waits for the spooler; "
                                      "install the current driver package and restart the print service."}]
    (root / "faq.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in collide) + "\n")
    return {"web": len(web) + len(exact) + len(near) + 1, "bad": len(bad), "code": len(code),
            "exact": len(exact) + 2, "near": len(near), "qa": len(collide), "longest": longest["id"]}


def _config(root: Path, out: Path):
    return config_from_dict({
        "inputs": [
            {"path": str(root / "web.jsonl"), "category": "web"},
            {"path": str(root / "mirror" / "web.jsonl"), "category": "web"},
            {"path": str(root / "bad.jsonl.gz"), "category": "books"},
            {"path": str(root / "code.jsonl"), "category": "code", "path_field": "path"},
            {"path": str(root / "faq.jsonl"), "category": "qa"},
        ],
        "output": str(out),
        "ray": {"num_cpus": 2},
        "dedup": {"num_partitions": 4},
    })


def _digest(out: Path) -> dict:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "timings.json"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("corpus")
    return root, _write_corpus(root, shared_dir)


@pytest.fixture(scope="module")
def one_node_run(corpus, tmp_path_factory):
    import ray

    root, counts = corpus
    out = tmp_path_factory.mktemp("one") / "out"
    ray.init(**RAY_TEST_KWARGS)
    try:
        stats = run_clean(_config(root, out))
    finally:
        ray.shutdown()
    return out, stats, counts


def test_accounting_quarantine_and_dedup(one_node_run, corpus):
    out, stats, counts = one_node_run
    mirrored = json.loads((corpus[0] / "mirror" / "web.jsonl").read_text())["id"]
    acc = stats["accounting"]
    assert acc["read"] == counts["web"] + counts["bad"] + counts["code"] + counts["qa"]
    assert acc["balanced"] and acc["quarantined"] == counts["bad"]
    quarantine = pq.read_table(out / "quarantine").to_pylist()
    assert {q["reason"].split(":")[0] for q in quarantine} == {"invalid_json", "text_not_string", "missing_text",
                                                               "invalid_utf8"}
    assert all(q["source_file"].endswith("bad.jsonl.gz") and q["position"] >= 1 for q in quarantine)
    dups = pq.read_table(out / "duplicates").to_pylist()
    exact = sorted((d["id"], d["duplicate_of"]) for d in dups if d["stage"] == "exact")
    assert exact == sorted([(f"x{i:03d}", f"w{i:03d}") for i in range(0, 10, 2)]  # the smaller id survives
                           + [("c99", "c0"), (mirrored, mirrored),
                              ("z001", counts["longest"])])  # not z000, which near dedup removed
    assert len(exact) == counts["exact"]
    assert [d["id"] for d in dups if d["stage"] == "minhash"] == ["z000"]
    cleaned = pads.dataset(out / "cleaned", format="parquet", partitioning="hive").to_table()
    assert cleaned.num_rows == acc["kept"]
    # Both sides of every removal are located in the input: the removed one is not kept, its survivor is.
    kept_at = {(r["source"], r["position"]) for r in cleaned.select(["source", "position"]).to_pylist()}
    removed_at = {(d["source"], d["position"]) for d in dups}
    assert len(removed_at) == len(dups) and not removed_at & kept_at
    assert all((d["duplicate_of_source"], d["duplicate_of_position"]) in kept_at for d in dups)
    qa_ids = cleaned.filter(pads.field("category") == "qa").column("id").to_pylist()
    assert sorted(qa_ids) == ["x000", "z000"]  # same ids as removed duplicates, different documents
    langs = {(r["category"], r["lang"]) for r in cleaned.select(["category", "lang"]).to_pylist()}
    assert {("web", "en"), ("web", "zh"), ("web", "ja"), ("code", None)} <= langs
    code_langs = set(cleaned.filter(pads.field("category") == "code").column("code_lang").to_pylist())
    assert code_langs == {"Python"}
    assert stats["stages"]["exact_dedup"]["dropped"]["exact_duplicate"]["docs"] == counts["exact"]
    assert sorted(stats["inputs"]["sources"]) == ["bad.jsonl.gz", "code.jsonl", "faq.jsonl", "mirror/web.jsonl",
                                                  "web.jsonl"]
    assert (out / "stats.json").is_file() and json.loads((out / "stats.json").read_text()) == stats


def test_rerun_gives_same_bytes_and_two_nodes_match_one(one_node_run, corpus, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    out, _, _ = one_node_run
    root, _ = corpus
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 150 << 20})
    try:
        cluster.add_node(num_cpus=2, object_store_memory=150 << 20)
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        out2 = tmp_path / "out"
        run_clean(_config(root, out2))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert _digest(out2) == _digest(out)
