"""Exact and near dedup on a local Ray: global grouping, transitive clusters, determinism, the CLI."""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import dedup_cli
from pipeline.config import ConfigError, DedupConfig
from pipeline.minhash import MinHasher

CFG = DedupConfig(num_partitions=4)


def _words(rng: random.Random, n: int) -> list[str]:
    return [f"w{rng.randrange(10**6)}" for _ in range(n)]


def _mutate(rng: random.Random, words: list[str], k: int) -> list[str]:
    out = list(words)
    for pos in rng.sample(range(len(out)), k):
        out[pos] = f"m{rng.randrange(10**9)}"
    return out


def _jaccard(a: str, b: str) -> float:
    h = MinHasher()
    sa, sb = set(h.shingles(a)), set(h.shingles(b))
    return len(sa & sb) / len(sa | sb)


def _corpus() -> tuple[list[dict], dict[str, str]]:
    """Unique docs, exact copies, near copies and a transitive chain; returns rows and expected removals."""
    rng = random.Random(42)
    rows, expected = [], {}

    def add(i, text, cat="web", lang="en", of=None):
        rows.append({"id": i, "text": text, "category": cat, "lang": lang, "lang_score": 0.9, "source": "t"})
        if of:
            expected[i] = of

    for i in range(60):
        add(f"u{i:03d}", " ".join(_words(rng, 150)))
    base = [" ".join(_words(rng, 150)) for _ in range(6)]
    for i, t in enumerate(base):
        add(f"b{i}", t)
        add(f"x{i}", t, of=f"b{i}")  # exact copy
        add(f"n{i}", " ".join(_mutate(rng, t.split(), 1)), of=f"b{i}")  # near copy
    add("code1", "def f(x):\n    return x + 1\n" * 20, cat="code", lang=None)
    add("code2", "def f(x):\n    return x + 1\n" * 20, cat="code", lang=None, of="code1")
    chain = [_words(rng, 200)]
    for _ in range(7):
        chain.append(_mutate(rng, chain[-1], 1))
    for i, words in enumerate(chain):
        add(f"c{i}", " ".join(words), of="c0" if i else None)
    assert _jaccard(" ".join(chain[0]), " ".join(chain[-1])) < 0.8  # only transitively similar
    return rows, expected


def _run(ray, rows, work, blocks, cfg=CFG):
    from pipeline.dedup_ray import exact_dedup, near_dedup

    ds = ray.data.from_arrow(pa.Table.from_pylist(rows)).repartition(blocks)
    kept, exact = exact_dedup(ds, cfg, str(work))
    kept, near = near_dedup(kept, cfg, str(work))
    return kept, exact, near


def _table(ds) -> pa.Table:
    return pa.concat_tables(ds.iter_batches(batch_format="pyarrow", batch_size=None))


def test_exact_and_near_dedup_find_every_group(ray_local, tmp_path):
    rows, expected = _corpus()
    kept, exact, near = (_table(ds) for ds in _run(ray_local, rows, tmp_path, blocks=5))
    removed = {r["id"]: r["duplicate_of"] for t in (exact, near) for r in t.to_pylist()}
    assert removed == expected
    assert {r["id"] for r in exact.to_pylist()} == {f"x{i}" for i in range(6)} | {"code2"}
    assert set(near.column("stage").to_pylist()) == {"minhash"}
    assert kept.num_rows == len(rows) - len(expected)
    assert kept.schema == pa.Table.from_pylist(rows).schema  # the input's columns and types
    code = [r for r in exact.to_pylist() if r["id"] == "code2"][0]
    text = next(r["text"] for r in rows if r["id"] == "code2")
    assert code["category"] == "code" and code["lang"] is None and code["n_chars"] == len(text)


def test_output_files_are_identical_across_block_counts_and_input_order(ray_local, tmp_path):
    rows, _ = _corpus()
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    outputs = []
    for name, data, blocks in (("a", rows, 1), ("b", shuffled, 7)):
        _run(ray_local, data, tmp_path / name, blocks)
        outputs.append({p.relative_to(tmp_path / name): p.read_bytes()
                        for p in sorted((tmp_path / name).rglob("*.parquet"))})
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) == 4 * CFG.num_partitions
    assert outputs[0] == outputs[1]


def test_partitions_grow_with_the_input_and_do_not_change_the_survivors(ray_local, tmp_path):
    rows, expected = _corpus()
    docs = len(rows)
    cfg = DedupConfig(num_partitions=2, partition_docs=20)
    kept, exact, near = (_table(ds) for ds in _run(ray_local, rows, tmp_path, blocks=3, cfg=cfg))
    partitions = -(-docs // 20)
    assert partitions > 2
    assert len(list(tmp_path.rglob("*.parquet"))) == 4 * partitions  # kept + duplicates, exact + near
    removed = {r["id"]: r["duplicate_of"] for t in (exact, near) for r in t.to_pylist()}
    assert removed == expected and kept.num_rows == docs - len(expected)


def test_partition_count_bounds_text_and_documents_per_partition():
    from pipeline.dedup import partition_count

    assert partition_count(docs=10, chars=100, num_partitions=16, partition_chars=1000, partition_docs=50) == 16
    assert partition_count(docs=10, chars=10_001, num_partitions=4, partition_chars=1000, partition_docs=50) == 11
    assert partition_count(docs=501, chars=100, num_partitions=4, partition_chars=1000, partition_docs=50) == 11


def test_label_propagation_that_cannot_converge_fails_clearly(ray_local, tmp_path):
    from pipeline.dedup_ray import near_dedup

    rng = random.Random(3)
    chain = [_words(rng, 200)]
    for _ in range(7):
        chain.append(_mutate(rng, chain[-1], 2))
    ds = ray_local.data.from_items([{"id": f"c{i}", "text": " ".join(w)} for i, w in enumerate(chain)])
    with pytest.raises(RuntimeError, match="max_iterations"):
        near_dedup(ds, DedupConfig(num_partitions=2, max_iterations=1), str(tmp_path / "one"))
    _, dups = near_dedup(ds, DedupConfig(num_partitions=2), str(tmp_path / "enough"))  # the default converges
    # two chains (c3 and c4 are not matched), each collapsed onto its smallest id
    assert sorted((r["id"], r["duplicate_of"]) for r in dups.take_all()) == [
        ("c1", "c0"), ("c2", "c0"), ("c3", "c0"), ("c5", "c4"), ("c6", "c4"), ("c7", "c4")]


def test_documents_without_words_are_not_near_duplicates_of_each_other(ray_local, tmp_path):
    """Emoji- or punctuation-only texts all reduce to the empty shingle; MinHash cannot tell them apart."""
    from pipeline.dedup_ray import near_dedup

    base = " ".join(_words(random.Random(9), 60))
    rows = [{"id": "e1", "text": "😀😀🎉🎉 🎂🎂"}, {"id": "e2", "text": "★★★ ☆☆☆ ◆◆◆"}, {"id": "e3", "text": "→ ← ↑ ↓"},
            {"id": "e4", "text": ""}, {"id": "w1", "text": base}, {"id": "w2", "text": base + " extra"}]
    kept, dups = near_dedup(ray_local.data.from_items(rows), DedupConfig(num_partitions=2), str(tmp_path))
    assert [(r["id"], r["duplicate_of"]) for r in dups.take_all()] == [("w2", "w1")]
    assert sorted(r["id"] for r in kept.take_all()) == ["e1", "e2", "e3", "e4", "w1"]


def test_a_long_chain_of_near_duplicates_converges_in_few_rounds(ray_local, tmp_path):
    from pipeline.dedup_ray import near_dedup

    # 60 sliding windows of 200 words, 3 words apart: propagation alone needs 13 rounds, jumping 4
    words = _words(random.Random(5), 200 + 3 * 60)
    ds = ray_local.data.from_items([{"id": f"c{i:02d}", "text": " ".join(words[3 * i:3 * i + 200])}
                                    for i in range(60)])
    kept, dups = near_dedup(ds, DedupConfig(num_partitions=2, max_iterations=8), str(tmp_path))
    assert [r["id"] for r in kept.take_all()] == ["c00"]
    assert sorted((r["id"], r["duplicate_of"]) for r in dups.take_all()) == [(f"c{i:02d}", "c00") for i in range(1, 60)]


def test_missing_columns_and_numeric_ids_are_named_in_the_driver(ray_local, tmp_path):
    from pipeline.dedup_ray import exact_dedup, near_dedup

    with pytest.raises(ValueError, match="no text column"):
        exact_dedup(ray_local.data.from_items([{"id": "a", "body": "x"}]), CFG, str(tmp_path))
    numeric = ray_local.data.from_items([{"id": 9, "text": "x"}, {"id": 10, "text": "x"}])
    for step in (exact_dedup, near_dedup):
        with pytest.raises(ValueError, match="the id column must hold strings, got int64") as err:
            step(numeric, CFG, str(tmp_path))
        assert type(err.value) is ValueError  # not a Ray task's error


# --------------------------------------------------------------------------- CLI


def _cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    dedup_cli.register(parser.add_subparsers())
    args = parser.parse_args(["dedup", *map(str, argv)])
    return args.func(args)


def test_cli_end_to_end(ray_local, tmp_path, capsys):
    rows, expected = _corpus()
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({**r, "extra": {"k": i}}, ensure_ascii=False) + "\n" for i, r in enumerate(rows)]
    src.write_text("".join(lines[:10]) + "\n" + "".join(lines[10:]), encoding="utf-8")  # a blank line is skipped
    assert _cli(src, tmp_path / "out", "--threshold", "0.8", "--num-perm", "128", "--ngram", "5",
                "--num-partitions", "3") == 0
    kept = (tmp_path / "out" / "kept.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    assert kept == [line for line, r in zip(lines, rows) if r["id"] not in expected]  # unchanged, in order
    dups = pq.read_table(tmp_path / "out" / "duplicates.parquet")
    assert dups.column_names == ["id", "duplicate_of", "stage"]
    assert dict(zip(dups.column("id").to_pylist(), dups.column("duplicate_of").to_pylist())) == expected
    assert Counter(dups.column("stage").to_pylist()) == {"exact": 7, "minhash": 13}
    assert f"{len(rows)} documents: 7 exact and 13 near duplicates removed, {len(rows) - 20} kept" \
        in capsys.readouterr().out
    assert not (tmp_path / "out" / ".work").exists()


@pytest.mark.parametrize("records,message", [
    ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "duplicate id 'a'"),
    ([{"text": "x"}], "missing or invalid `id`"),
    ([{"id": "a", "text": 3}], "non-string `text`"),
])
def test_cli_rejects_bad_ids_and_texts(tmp_path, records, message):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ConfigError, match=message):
        _cli(src, tmp_path / "out")


def test_cli_rejects_bad_json_and_flags(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "x"}\n{oops\n')
    with pytest.raises(ConfigError, match=r"in.jsonl:2: not valid JSON"):
        _cli(src, tmp_path / "out")
    with pytest.raises(ConfigError, match="--threshold: 1.5 is out of range"):
        _cli(src, tmp_path / "out", "--threshold", "1.5")
    with pytest.raises(ConfigError, match="no such file"):
        _cli(tmp_path / "missing.jsonl", tmp_path / "out")


def test_cli_on_an_empty_file(ray_local, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n")
    assert _cli(src, tmp_path / "out", "--num-partitions", "2") == 0
    assert (tmp_path / "out" / "kept.jsonl").read_text() == ""
    assert pq.read_table(tmp_path / "out" / "duplicates.parquet").num_rows == 0
