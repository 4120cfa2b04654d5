"""Sample plan and per-document selection, and the input readers (no Ray)."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
import zstandard

from mixing.ratios import load_ratios
from pipeline.config import ConfigError
from tokenizer_training.sampling import CODE, SKIPPED, census, plan_sample, select, target_shares
from tokenizer_training.sources import SCHEMA, list_input_files, read_file

LANGS = frozenset({"en", "zh", "kk"})


def test_target_shares_follow_table_with_temperature_floor():
    ratios = load_ratios()
    plain = target_shares(ratios, 1.0)
    lifted = target_shares(ratios, 0.3)
    assert sum(plain.values()) == pytest.approx(1.0) and sum(lifted.values()) == pytest.approx(1.0)
    assert len(lifted) == 42  # 41 languages + code
    assert plain[CODE] == lifted[CODE] == pytest.approx(ratios.categories["code"])
    assert plain["en"] / plain["kk"] == pytest.approx(ratios.languages["en"] / ratios.languages["kk"])
    assert lifted["kk"] > 5 * plain["kk"] and lifted["en"] < plain["en"]


def test_plan_water_fills_short_buckets():
    shares = {"en": 0.5, "zh": 0.3, "kk": 0.2}
    plan = plan_sample(shares, {"en": 10_000, "zh": 10_000, "kk": 50}, sample_bytes=1_000, seed=1)
    assert plan.short == ["kk"]
    assert plan.planned["kk"] == 50 and plan.rates["kk"] == 1.0
    assert plan.planned_bytes == 1_000  # kk's unused 150 bytes went to en and zh, in their ratio
    assert (plan.planned["en"], plan.planned["zh"]) == (594, 356)  # 950 split 5:3, rounded
    assert plan.asked["kk"] == 200 and not plan.exhausts_input


def test_plan_takes_everything_when_input_is_small():
    plan = plan_sample({"en": 0.6, "zh": 0.4}, {"en": 100, "zh": 0}, sample_bytes=1_000, seed=1)
    assert plan.planned == {"en": 100, "zh": 0} and plan.exhausts_input and plan.short == ["en", "zh"]


def _table(n: int, lang: str = "en", category: str = "web", start: int = 0) -> pa.Table:
    return pa.Table.from_pydict({
        "id": [f"{lang}-{i}" for i in range(start, start + n)],
        "text": [f"text number {i}" for i in range(start, start + n)],
        "category": [category] * n, "lang": [lang] * n, "code_lang": [None] * n,
    }, schema=SCHEMA)


def test_census_buckets_and_skips():
    table = pa.concat_tables([_table(3, "en"), _table(2, "tgl_Latn"), _table(4, None, "code")])
    tally = census(table, LANGS)
    assert tally.docs == {"en": 3, SKIPPED: 2, CODE: 4}
    assert tally.bytes["en"] == sum(len(f"text number {i}") for i in range(3))


def test_selection_is_deterministic_and_independent_of_batching():
    table = _table(4000)
    plan = plan_sample({"en": 1.0}, {"en": 100_000}, sample_bytes=25_000, seed=5)
    whole = select(table, plan, LANGS).column("text").to_pylist()
    pieces = [t for start in (2000, 0) for t in select(table.slice(start, 2000), plan, LANGS).column("text").to_pylist()]
    assert sorted(whole) == sorted(pieces)
    assert 0.2 < len(whole) / 4000 < 0.3  # rate 0.25
    other_seed = plan_sample({"en": 1.0}, {"en": 100_000}, sample_bytes=25_000, seed=6)
    assert select(table, other_seed, LANGS).column("text").to_pylist() != whole


def test_selection_drops_other_languages():
    table = pa.concat_tables([_table(10, "en"), _table(10, "tgl_Latn")])
    plan = plan_sample({"en": 1.0}, {"en": 10}, sample_bytes=10**6, seed=1)
    picked = select(table, plan, LANGS)
    assert picked.column("bucket").to_pylist() == ["en"] * 10


# ----------------------------------------------------------------------------- readers

RECORDS = [
    {"id": "a", "text": "hello", "lang": "en", "category": "web"},
    {"id": "b", "text": "print(1)", "lang": None, "category": "code", "code_lang": "Python", "path": "x.py"},
    {"text": "no id here", "lang": "zh", "category": "books", "topic": "extra field"},
]


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@pytest.mark.parametrize("name,compress", [("d.jsonl", bytes), ("d.jsonl.gz", gzip.compress),
                                           ("d.jsonl.zst", zstandard.ZstdCompressor().compress)])
def test_read_jsonl_formats(tmp_path, name, compress):
    path = tmp_path / name
    path.write_bytes(compress(_jsonl(RECORDS)))
    rows = pa.concat_tables(read_file(str(path))).to_pylist()
    assert [r["text"] for r in rows] == ["hello", "print(1)", "no id here"]
    assert rows[1]["code_lang"] == "Python" and rows[1]["lang"] is None
    assert rows[2]["id"] == xxhash.xxh64_hexdigest(b"no id here")  # no id: a hash of the text


def test_missing_and_empty_ids_become_content_hashes(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_bytes(_jsonl([{"id": "keep", "text": "same"}, {"id": "", "text": "same"}, {"text": "same"}]))
    ids = pa.concat_tables(read_file(str(path))).column("id").to_pylist()
    assert ids[0] == "keep"
    assert ids[1] == ids[2] == xxhash.xxh64_hexdigest(b"same")


def test_read_jsonl_bad_lines_and_lone_surrogates(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_jsonl(RECORDS[:1]) + b'{"text": "x\\ud800y", "lang": "en"}\nnot json\n{"text": 5}\n\n'
                     + _jsonl(RECORDS[2:]))
    counters = {}
    rows = pa.concat_tables(read_file(str(path), counters=counters)).to_pylist()
    assert [r["text"] for r in rows] == ["hello", "x\ufffdy", "no id here"]
    assert counters == {"bad_records": 2}


def test_read_hive_parquet_and_listing(tmp_path):
    part = tmp_path / "cleaned" / "category=web" / "lang=en"
    part.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["one", None]}), part / "part-0.parquet")
    (tmp_path / "cleaned" / "_SUCCESS").write_text("")
    (tmp_path / "cleaned" / "stats.json").write_text("{}")
    files = list_input_files(str(tmp_path / "cleaned"))
    assert [f.rsplit("/", 1)[-1] for f in files] == ["part-0.parquet"]
    counters = {}
    rows = pa.concat_tables(read_file(files[0], counters=counters)).to_pylist()
    assert rows == [{"id": "p1", "text": "one", "category": "web", "lang": "en", "code_lang": None}]
    assert counters == {"bad_records": 1}


def test_listing_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        list_input_files(str(tmp_path / "missing*.jsonl"))
    with pytest.raises(ConfigError, match="no JSONL or Parquet"):
        list_input_files(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown format"):
        list_input_files(str(tmp_path / "notes.txt"))
