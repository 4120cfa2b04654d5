"""The pure dedup steps (no Ray): exact survivors, band buckets, label propagation, the final split."""
from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline import dedup
from pipeline.minhash import MinHasher


def _docs(ids, texts, lang="en"):
    # `tags` (a list column) rides along: joins only ever see the id and key columns
    return pa.table({"id": ids, "text": texts, "category": ["web"] * len(ids), "lang": [lang] * len(ids),
                     "tags": [[i] for i in range(len(ids))]})


def test_partition_of_is_stable_and_in_range():
    values = pa.array([f"id{i}" for i in range(1000)])
    parts = dedup.partition_of(values, 7)
    assert parts.min() >= 0 and parts.max() == 6
    # pinned: every Ray worker (another process, another machine) must route a key to the same partition
    assert parts[:8].tolist() == [5, 2, 0, 4, 1, 6, 2, 2]
    assert len(set(parts.tolist())) == 7


def test_exact_survivor_is_the_smallest_id_whatever_the_order():
    texts = ["same", "other", "same", "same", "other"]
    ids = ["d3", "d9", "d1", "d2", "a0"]
    docs = _docs(ids, texts)
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0]):
        table = docs.take(order)
        table = table.append_column("_key", dedup.exact_keys(table.column("text").combine_chunks()))
        kept, dups = dedup.exact_survivors(table)
        assert kept.column_names == docs.column_names
        assert kept.column("id").to_pylist() == ["a0", "d1"] and kept.column("tags").to_pylist() == [[4], [2]]
        assert dups.schema == dedup.DUPLICATE_SCHEMA
        assert dups.to_pydict() == {"id": ["d2", "d3", "d9"], "duplicate_of": ["d1", "d1", "a0"],
                                    "stage": ["exact"] * 3, "category": ["web"] * 3, "lang": ["en"] * 3,
                                    "n_chars": [4, 4, 5]}


def test_exact_keys_see_every_character():
    keys = dedup.exact_keys(pa.array(["a b", "a  b", "A b", "a b"])).to_pylist()
    assert keys[0] == keys[3] and len({keys[0], keys[1], keys[2]}) == 3
    with pytest.raises(ValueError, match="null"):
        dedup.exact_keys(pa.array(["x", None]))


def test_bucket_edges_star_to_smallest_id_and_verified():
    # Three documents in one bucket: two agree on every position, the third on only 20%.
    sig = np.tile(np.arange(10, dtype=np.uint64), (3, 1))
    sig[2, 2:] += 100
    table = dedup.band_table(pa.array(["c", "a", "b"]), sig, bands=1, rows=2)
    assert table.num_rows == 3 and len(set(table.column("band_key").to_pylist())) == 1
    assert dedup.bucket_edges(table, 0.8).to_pydict() == {"src": ["c"], "dst": ["a"]}
    assert dedup.bucket_edges(table, 0.1).to_pydict() == {"src": ["b", "c"], "dst": ["a", "a"]}


def test_band_table_rejects_too_few_permutations():
    with pytest.raises(ValueError, match="permutations"):
        dedup.band_table(pa.array(["a"]), np.zeros((1, 8), dtype=np.uint64), bands=3, rows=3)


def _route(table: pa.Table, column: str, partitions: int) -> list[pa.Table]:
    parts = dedup.partition_of(table.column(column).combine_chunks(), partitions)
    return [table.filter(pa.array(parts == p)) for p in range(partitions)]


def _deliver(sent: list[list[pa.Table]], schema: pa.Schema) -> list[pa.Table]:
    """What each partition receives: the pieces every partition routed to it."""
    return [pa.concat_tables([pieces[p] for pieces in sent]).cast(schema) for p in range(len(sent))]


def _rounds(edges: pa.Table, partitions: int = 1, max_rounds: int = 20) -> tuple[dict, int]:
    """Label propagation, hooking and pointer jumping as the Ray layer runs them, each step per partition
    with tables routed by hash; the final labels and the rounds they took."""
    both = pa.concat_tables([edges, edges.select(["dst", "src"]).rename_columns(["src", "dst"])])
    edges = _route(both, "src", partitions)
    labels = [dedup.initial_labels(e) for e in edges]
    for rnd in range(1, max_rounds + 1):
        inbox = _deliver([_route(dedup.label_messages(e, l), "node", partitions) for e, l in zip(edges, labels)],
                         dedup.MESSAGE_SCHEMA)
        before, (labels, changed) = labels, zip(*(dedup.relabel(l, m) for l, m in zip(labels, inbox)))
        requests = _deliver([_route(dedup.jump_requests(b, a), "target", partitions) for b, a in zip(before, labels)],
                            dedup.REQUEST_SCHEMA)
        labels, hooked = zip(*(dedup.hook(l, r) for l, r in zip(labels, requests)))
        answers = _deliver([_route(dedup.jump_answers(r, l), "node", partitions) for r, l in zip(requests, labels)],
                           dedup.MESSAGE_SCHEMA)
        labels, jumped = zip(*(dedup.adopt_jumps(l, a) for l, a in zip(labels, answers)))
        if not sum(changed) + sum(hooked) + sum(jumped):
            final = pa.concat_tables(labels)
            return dict(zip(final.column("node").to_pylist(), final.column("label").to_pylist())), rnd
    raise AssertionError("did not converge")


def _union_find(src: list[str], dst: list[str]) -> dict:
    parent = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in zip(src, dst):
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    return {x: root(x) for x in parent}


def test_transitive_chains_collapse_to_one_component():
    # a~b and b~c (star edges from two buckets), plus a long chain and a separate pair.
    chain = [f"n{i:02d}" for i in range(12)]
    src = ["b", "c"] + chain[1:] + ["y"]
    dst = ["a", "b"] + chain[:-1] + ["x"]
    for partitions in (1, 16):  # 16: some partitions have no nodes
        labels, _ = _rounds(pa.table({"src": src, "dst": dst}, schema=dedup.EDGE_SCHEMA), partitions)
        assert labels["a"] == labels["b"] == labels["c"] == "a"
        assert {labels[n] for n in chain} == {"n00"}
        assert labels["y"] == "x" and labels["x"] == "x"


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_a_long_chain_takes_logarithmic_rounds(order):
    # 600 near duplicates in a row (sliding-window chunks, revisions): propagation alone needs ~600 rounds
    n = 600
    ids = [f"d{i:04d}" for i in range(n)]
    ids = {"ascending": ids, "descending": ids[::-1], "shuffled": random.Random(0).sample(ids, n)}[order]
    labels, rounds = _rounds(pa.table({"src": ids[1:], "dst": ids[:-1]}, schema=dedup.EDGE_SCHEMA), partitions=3)
    assert labels == {i: "d0000" for i in ids}
    assert rounds <= 2 * math.log2(n) + 3


@pytest.mark.parametrize("seed", [0, 1])
def test_random_graphs_match_union_find(seed):
    rng = random.Random(seed)
    n = 400
    src = [f"v{rng.randrange(n)}" for _ in range(300)]
    dst = [f"v{rng.randrange(n)}" for _ in range(300)]
    labels, rounds = _rounds(pa.table({"src": src, "dst": dst}, schema=dedup.EDGE_SCHEMA), partitions=4)
    assert labels == _union_find(src, dst)
    assert rounds <= 2 * math.log2(n) + 3


def test_split_duplicates_records_the_survivor():
    docs = _docs(["a", "b", "c", "z"], ["t1", "t2", "t3", "t4"])
    labels = pa.table({"node": ["a", "b", "c"], "label": ["a", "a", "a"], "changed": [False] * 3},
                      schema=dedup.LABEL_SCHEMA)
    kept, dups = dedup.split_duplicates(docs, labels)
    assert kept.column("id").to_pylist() == ["a", "z"] and kept.schema == docs.schema
    assert kept.column("tags").to_pylist() == [[0], [3]]
    assert dups.select(["id", "duplicate_of", "stage"]).to_pydict() == {
        "id": ["b", "c"], "duplicate_of": ["a", "a"], "stage": ["minhash", "minhash"]}
    kept, dups = dedup.split_duplicates(docs, dedup.LABEL_SCHEMA.empty_table())
    assert kept.num_rows == 4 and dups.num_rows == 0


def test_null_ids_are_rejected():
    docs = _docs([None, "b"], ["x", "x"])
    with pytest.raises(ValueError, match="id"):
        dedup.split_duplicates(docs, None)


def test_large_string_ids_split_as_string_ids_do():
    """Polars and some Arrow readers give large_string; the labels hold string."""
    docs = _docs(pa.array(["a", "b", "z"], pa.large_string()), ["t1", "t2", "t3"])
    labels = pa.table({"node": ["a", "b"], "label": ["a", "a"], "changed": [False] * 2}, schema=dedup.LABEL_SCHEMA)
    kept, dups = dedup.split_duplicates(docs, labels)
    assert kept.column("id").to_pylist() == ["a", "z"] and kept.schema == docs.schema
    assert dups.select(["id", "duplicate_of"]).to_pydict() == {"id": ["b"], "duplicate_of": ["a"]}


@pytest.mark.parametrize("step", ["exact", "near"])
def test_numeric_ids_are_refused_not_compared_as_numbers(step):
    """The survivor is the smallest id as a string: with integer ids, 9 would beat 10 the other way round."""
    docs = _docs([9, 10], ["same", "same"])
    with pytest.raises(ValueError, match="the id column must hold strings, got int64"):
        if step == "exact":
            dedup.exact_survivors(docs.append_column("_key", dedup.exact_keys(docs.column("text").combine_chunks())))
        else:
            dedup.split_duplicates(docs, None)


def test_an_id_that_names_several_documents_is_refused():
    """Labels are per id: a repeated id would remove every document that carries it."""
    with pytest.raises(ValueError, match="ids must be unique, but 'a' names several documents"):
        dedup.split_duplicates(_docs(["a", "b", "a"], ["t1", "t2", "t3"]), None)


def test_near_pipeline_in_one_partition_finds_mutated_copies():
    rng = np.random.default_rng(0)
    base = [" ".join(f"w{x}" for x in rng.integers(0, 10**6, 200)) for _ in range(20)]
    copies = [t.replace(t.split()[100], "changed", 1) for t in base[:5]]
    ids = [f"base{i:02d}" for i in range(20)] + [f"copy{i:02d}" for i in range(5)]
    sigs = MinHasher().signatures(base + copies)
    edges = dedup.bucket_edges(dedup.band_table(pa.array(ids), sigs, 9, 13), 0.8)
    labels, _ = _rounds(edges)
    assert labels == {**{f"copy{i:02d}": f"base{i:02d}" for i in range(5)}, **{f"base{i:02d}": f"base{i:02d}" for i in range(5)}}


def test_an_earlier_survivor_removed_later_is_replaced_by_its_own_survivor():
    from pipeline.dedup import DUPLICATE_SCHEMA, through_later_removals

    def dups(*pairs, stage):
        return pa.table({"id": [a for a, _ in pairs], "duplicate_of": [b for _, b in pairs],
                         "stage": [stage] * len(pairs), "category": ["web"] * len(pairs),
                         "lang": ["en"] * len(pairs), "n_chars": [1] * len(pairs)}, schema=DUPLICATE_SCHEMA)

    exact = dups(("c", "b"), ("e", "d"), ("g", "b"), stage="exact")
    near = dups(("b", "a"), ("f", "a"), stage="minhash")
    resolved = through_later_removals(exact, near)
    assert resolved.column("duplicate_of").to_pylist() == ["a", "d", "a"]  # d was kept: unchanged
    assert resolved.column("id").to_pylist() == ["c", "e", "g"] and resolved.schema == exact.schema
    assert through_later_removals(exact, near.slice(0, 0)).equals(exact)
