"""Exact and MinHash near-duplicate removal: the pure steps, over Arrow tables, without Ray.

The Ray layer (`pipeline.dedup_ray`) moves tables between these steps through hash-partitioned
Parquet files; every step here sees one partition and returns what goes to the next one.

* Exact: key = xxh3-128 of the document text as the normalize stage left it (NFC, control characters
  removed, whitespace tidied; no case folding, which would merge code that differs in case). All
  documents with one key meet in one partition; the smallest id survives.
* Near: signatures -> band keys (band index + hash of the band's rows) -> within each band bucket, a
  star edge from every member to the bucket's smallest id, kept only if the two signatures agree on
  at least `threshold` of their positions (estimated Jaccard; this cuts LSH false positives before
  they can chain clusters together) -> connected components, in rounds until no label changes of
  min-label propagation over the edges, then hooking and pointer jumping over the labels (see
  `jump_requests`), so a chain of n near duplicates takes ~log2(n) rounds, not n -> every document
  whose component label (= smallest id in its component) is not itself is removed as a duplicate *of
  that survivor*.
Ids are compared as strings (code-point order), so the survivor does not depend on arrival order.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pipeline.minhash import MinHasher, mix_rows

__all__ = [
    "MinHasher", "DUPLICATE_SCHEMA", "EDGE_SCHEMA", "LABEL_SCHEMA", "MESSAGE_SCHEMA",
    "partition_of", "exact_keys", "exact_survivors", "band_table", "bucket_edges",
    "REQUEST_SCHEMA", "initial_labels", "label_messages", "relabel", "jump_requests", "hook", "jump_answers",
    "adopt_jumps", "split_duplicates",
]

# Removed documents, with what the clean job's statistics need.
DUPLICATE_SCHEMA = pa.schema([
    ("id", pa.string()), ("duplicate_of", pa.string()), ("stage", pa.string()),
    ("category", pa.string()), ("lang", pa.string()), ("n_chars", pa.int64()),
])
EDGE_SCHEMA = pa.schema([("src", pa.string()), ("dst", pa.string())])
LABEL_SCHEMA = pa.schema([("node", pa.string()), ("label", pa.string()), ("changed", pa.bool_())])
MESSAGE_SCHEMA = pa.schema([("node", pa.string()), ("label", pa.string())])
REQUEST_SCHEMA = pa.schema([("node", pa.string()), ("target", pa.string()), ("label", pa.string())])


def partition_count(docs: int, chars: int, num_partitions: int, partition_chars: int, partition_docs: int) -> int:
    """Hash partitions for an input of `docs` documents and `chars` characters: at least
    `num_partitions`, and enough that none holds more than `partition_chars` of text or
    `partition_docs` documents, so a partition task's memory stays flat as the corpus grows.
    Survivors do not depend on it (smallest id per key or component)."""
    return max(num_partitions, -(-chars // partition_chars), -(-docs // partition_docs))


def partition_of(values: pa.Array, num_partitions: int) -> np.ndarray:
    """Hash partition (0..num_partitions-1) of each string or binary value; stable across runs."""
    digests = np.fromiter((xxhash.xxh3_64_intdigest(v) for v in _as_bytes(values)), dtype=np.uint64,
                          count=len(values))
    return (digests % np.uint64(num_partitions)).astype(np.int64)


def _as_bytes(values: pa.Array):
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return (v.encode("utf-8") for v in values.to_pylist())
    return values.to_pylist()


def check_id_type(id_type: pa.DataType) -> None:
    """Survivors are the smallest id as a string ("10" < "9"), so ids must be strings, not numbers."""
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        raise ValueError(f"dedup: the id column must hold strings, got {id_type} (cast the ids: survivors are "
                         "the smallest id as a string)")


def _check_ids(table: pa.Table) -> None:
    check_id_type(table.column("id").type)
    if table.column("id").null_count:
        raise ValueError("dedup: documents need a non-null string id")


# --------------------------------------------------------------------------- exact


def exact_keys(texts: pa.Array) -> pa.Array:
    """16-byte content key per text (xxh3-128 of its UTF-8 bytes)."""
    if texts.null_count:
        raise ValueError("exact dedup: text must not be null")
    return pa.array([xxhash.xxh3_128_digest(t.encode("utf-8")) for t in texts.to_pylist()],
                    type=pa.binary())


def exact_survivors(docs: pa.Table, key_column: str = "_key") -> tuple[pa.Table, pa.Table]:
    """Split one key partition into kept documents (smallest id per key, sorted by id, without the
    key column) and duplicates (`DUPLICATE_SCHEMA`, stage "exact", duplicate_of = that smallest id)."""
    _check_ids(docs)
    narrow = pa.table({key_column: docs.column(key_column), "id": docs.column("id"), "_row": np.arange(docs.num_rows)})
    # use_threads=False everywhere here: Arrow's threaded group-by fails at random inside CPU-limited
    # Ray workers ("thread index 10 is out of range"), seen in the label-propagation rounds.
    firsts = (narrow.group_by(key_column, use_threads=False).aggregate([("id", "min")])
              .rename_columns([key_column, "_survivor"]))
    survivor = _in_row_order(narrow.join(firsts, key_column)).column("_survivor")
    is_dup = pc.not_equal(docs.column("id"), survivor)
    kept = docs.filter(pc.invert(is_dup)).drop_columns([key_column]).sort_by("id")
    return kept, _duplicates(docs.filter(is_dup), survivor.filter(is_dup), "exact")


def _in_row_order(joined: pa.Table) -> pa.Table:
    """Joins do not keep row order; the narrow tables carry `_row` to restore it (so only the id and
    key columns go through the join, whatever types the other columns have)."""
    return joined.sort_by("_row")


def through_later_removals(dups: pa.Table, later: pa.Table) -> pa.Table:
    """`dups` (an earlier stage's duplicates) with every `duplicate_of` that a later stage removed
    replaced by the survivor that stage kept for it, so each names a document that is kept. One hop
    is enough: a later stage's survivors are final. Rows stay in order."""
    final = later.select(["id", "duplicate_of"]).rename_columns(["_of", "_final"])
    narrow = pa.table({"duplicate_of": dups.column("duplicate_of"), "_row": np.arange(dups.num_rows)})
    joined = _in_row_order(narrow.join(final, "duplicate_of", right_keys="_of", join_type="left outer"))
    resolved = pc.coalesce(joined.column("_final"), joined.column("duplicate_of"))
    return dups.set_column(dups.schema.get_field_index("duplicate_of"), "duplicate_of", resolved)


def _duplicates(docs: pa.Table, duplicate_of: pa.ChunkedArray, stage: str) -> pa.Table:
    n = docs.num_rows
    out = pa.table({
        "id": docs.column("id"),
        "duplicate_of": duplicate_of,
        "stage": pa.array([stage] * n, type=pa.string()),
        "category": docs.column("category") if "category" in docs.column_names else pa.nulls(n, pa.string()),
        "lang": docs.column("lang") if "lang" in docs.column_names else pa.nulls(n, pa.string()),
        "n_chars": pc.utf8_length(docs.column("text")).cast(pa.int64()),
    })
    return out.cast(DUPLICATE_SCHEMA).sort_by("id")


# --------------------------------------------------------------------------- near: bands and edges


def band_table(ids: pa.Array, signatures: np.ndarray, bands: int, rows: int) -> pa.Table:
    """One row per (document, band): `band_key` (uint64 hash of band index + the band's rows), `id`,
    and the whole signature as `sig` (fixed_size_list<uint32>) for verifying candidates later."""
    n, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} permutations, have {num_perm}")
    keys = np.empty((n, bands), dtype=np.uint64)
    for b in range(bands):
        band = signatures[:, b * rows:(b + 1) * rows]
        keys[:, b] = mix_rows(np.hstack([np.full((n, 1), b, dtype=np.uint64), band]))
    sig32 = signatures.astype(np.uint32)
    flat_sigs = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(sig32, bands, axis=0).ravel()), num_perm)
    return pa.table({
        "band_key": pa.array(keys.ravel()),
        "id": ids.take(pa.array(np.repeat(np.arange(n), bands))).cast(pa.string()),
        "sig": flat_sigs,
    })


def bucket_edges(bands: pa.Table, threshold: float) -> pa.Table:
    """Star edges (src -> dst = the bucket's smallest id) of every band bucket with several documents,
    kept where the signatures agree on >= threshold of positions; deduplicated, sorted."""
    if bands.num_rows == 0:
        return EDGE_SCHEMA.empty_table()
    bands = bands.sort_by([("band_key", "ascending"), ("id", "ascending")])
    keys = bands.column("band_key").to_numpy()
    starts = np.r_[True, keys[1:] != keys[:-1]]
    head = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))  # row of each bucket's min id
    member = np.flatnonzero(~starts)
    if member.size == 0:
        return EDGE_SCHEMA.empty_table()
    sig = bands.column("sig").combine_chunks()
    sig = sig.values.to_numpy().reshape(len(sig), sig.type.list_size)
    agree = (sig[member] == sig[head[member]]).mean(axis=1)
    member = member[agree >= threshold]
    ids = bands.column("id")
    edges = pa.table({"src": ids.take(member), "dst": ids.take(head[member])}, schema=EDGE_SCHEMA)
    return (edges.group_by(["src", "dst"], use_threads=False).aggregate([])
            .sort_by([("src", "ascending"), ("dst", "ascending")]))


# --------------------------------------------------------------------------- near: components


def initial_labels(edges: pa.Table) -> pa.Table:
    """Every edge source labelled with itself, marked changed so that it sends its label once.
    Edges are stored in both directions, partitioned by `src`, so each node appears here exactly once."""
    nodes = pc.unique(edges.column("src")).sort()
    return pa.table({"node": nodes, "label": nodes, "changed": pa.array([True] * len(nodes))},
                    schema=LABEL_SCHEMA)


def label_messages(edges: pa.Table, labels: pa.Table) -> pa.Table:
    """The label of every node that changed in the last round, sent along its edges to `dst`."""
    changed = labels.filter(labels.column("changed")).select(["node", "label"])
    sent = edges.join(changed, "src", right_keys="node").select(["dst", "label"])
    return sent.rename_columns(["node", "label"]).cast(MESSAGE_SCHEMA)


def relabel(labels: pa.Table, messages: pa.Table) -> tuple[pa.Table, int]:
    """Propagation: each node takes the smallest of its label and the labels sent to it, and is marked
    changed (to send next round) only if it fell; returns the new labels (sorted by node) and how many changed."""
    return _lower(labels, messages, keep_changed=False)


# Propagation alone moves a label one hop per round. After it, each round also works on the labels as
# pointers (every label is a node of the same component, so none of this can join two components):
# a node whose label fell tells its former label node the new one (hooking: that node, and whatever
# points at it, need not wait for the label to arrive hop by hop), and every node takes its label
# node's label if smaller (pointer jumping: l(v) := min(l(v), l(l(v)))). Jumping alone is not enough
# where ids run in no order along a chain (a shuffled path of 600 still took 161 rounds); with hooking
# it takes ~log2(n) + 1 (17 for a shuffled path of 100,000).


def jump_requests(before: pa.Table, after: pa.Table) -> pa.Table:
    """Asking side, from one partition's labels before and after propagation: rows `node, target, label`
    (routed by hash(target)) for every node not labelled with itself (target = its label, to jump) and
    every node whose label fell from another node's (target = that node, to hook it to the new label)."""
    was = before.select(["node", "label"]).rename_columns(["node", "was"])
    joined = after.join(was, "node")
    node, label = joined.column("node"), joined.column("label")
    jump = pc.not_equal(node, label)
    hook = pc.and_(joined.column("changed"), pc.not_equal(node, joined.column("was")))
    return pa.concat_tables([
        pa.table({"node": node.filter(jump), "target": label.filter(jump), "label": label.filter(jump)},
                 schema=REQUEST_SCHEMA),
        pa.table({"node": node.filter(hook), "target": joined.column("was").filter(hook), "label": label.filter(hook)},
                 schema=REQUEST_SCHEMA),
    ])


def hook(labels: pa.Table, requests: pa.Table) -> tuple[pa.Table, int]:
    """Answering side, first: each requested node (of this partition) takes the smallest label the requests
    to it carry; returns the new labels (sorted by node) and how many fell."""
    proposals = requests.select(["target", "label"]).rename_columns(["node", "label"])
    return _lower(labels, proposals, keep_changed=True)


def jump_answers(requests: pa.Table, labels: pa.Table) -> pa.Table:
    """Answering side, then: the requested node's label, for each request it would lower (rows `node, label`,
    routed by hash(node), the asking node)."""
    asked = labels.select(["node", "label"]).rename_columns(["target", "answer"])
    joined = requests.join(asked, "target")
    lower = pc.less(joined.column("answer"), joined.column("label"))
    return pa.table({"node": joined.column("node").filter(lower), "label": joined.column("answer").filter(lower)},
                    schema=MESSAGE_SCHEMA)


def adopt_jumps(labels: pa.Table, answers: pa.Table) -> tuple[pa.Table, int]:
    """Asking side, last: each node takes the smallest answer if smaller; returns the new labels (sorted by node)
    and how many fell."""
    return _lower(labels, answers, keep_changed=True)


def _lower(labels: pa.Table, proposals: pa.Table, keep_changed: bool) -> tuple[pa.Table, int]:
    """Each label lowered to the smallest proposal for its node where that is smaller; `changed` marks the
    lowered ones (or-ed with this round's earlier marks if `keep_changed`: a node sends its label next round
    if any step lowered it). Sorted by node, with how many were lowered."""
    if proposals.num_rows == 0:
        joined, label, lowered = labels, labels.column("label"), pa.array([False] * labels.num_rows, pa.bool_())
    else:
        best = (proposals.group_by("node", use_threads=False).aggregate([("label", "min")])
                .rename_columns(["node", "incoming"]))
        joined = labels.join(best, "node", join_type="left outer")
        incoming = joined.column("incoming")
        lowered = pc.fill_null(pc.less(incoming, joined.column("label")), False)
        label = pc.if_else(lowered, incoming, joined.column("label"))
    new = pa.table({
        "node": joined.column("node"),
        "label": label,
        "changed": pc.or_(joined.column("changed"), lowered) if keep_changed else lowered,
    }, schema=LABEL_SCHEMA).sort_by("node")
    return new, int(pc.sum(lowered).as_py() or 0)


def split_duplicates(docs: pa.Table, labels: Optional[pa.Table]) -> tuple[pa.Table, pa.Table]:
    """Kept documents (sorted by id) and duplicates (stage "minhash", duplicate_of = the component's
    smallest id) of one id partition, given the final labels of that partition's nodes."""
    _check_ids(docs)
    ids = docs.column("id").cast(pa.string())  # as the labels hold them
    if pc.count_distinct(ids).as_py() != docs.num_rows:  # all copies of an id share its partition
        counts = pc.value_counts(ids)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise ValueError(f"dedup: ids must be unique, but {repeated!r} names several documents")
    if labels is None or labels.num_rows == 0:
        return docs.sort_by("id"), DUPLICATE_SCHEMA.empty_table()
    removed = labels.filter(pc.not_equal(labels.column("node"), labels.column("label"))).select(["node", "label"])
    narrow = pa.table({"id": ids, "_row": np.arange(docs.num_rows)})
    label = _in_row_order(narrow.join(removed, "id", right_keys="node", join_type="left outer")).column("label")
    is_dup = pc.is_valid(label)
    kept = docs.filter(pc.invert(is_dup)).sort_by("id")
    dups = docs.filter(is_dup)
    return kept, _duplicates(dups, label.filter(is_dup), "minhash")
