"""Hostile input (issue 6): a corpus of every kind of bad record runs through the real clean job to the end.

Every planted bad record must be in quarantine with its file, position and reason; every valid document
must be in cleaned/ (normalized) or, for the planted exact duplicate, once in cleaned/ and once in
duplicates/; stats.json must balance overall and per stage. The corpus is generated here, in tmp_path.

Position of a file-level failure (cannot be opened, not a regular file, broken archive): the 1-based
line where reading stopped for JSONL (1 when nothing could be read), the 0-based row index for Parquet
(0 when nothing could be read) -- see pipeline/read.py.
"""
from __future__ import annotations

import gzip
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.clean_job import run_clean
from pipeline.config import Config, InputSource, ReadConfig, config_from_dict
from pipeline.normalize import normalize_text
from pipeline.read import read_file, stable_id
from pipeline.sources import InputFile, list_input_files

ROOT_USER = os.geteuid() == 0
_NOT_A_RECORD = {"invalid_utf8", "invalid_json", "not_an_object"}  # what a line of binary junk may become


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    root: Path
    valid: dict = field(default_factory=dict)  # (source, position) -> (id, expected text or None)
    bad: dict = field(default_factory=dict)  # (url, position) -> set of allowed reason prefixes
    listed: set = field(default_factory=set)  # `source` names that must appear in stats["inputs"]
    dup_pair: tuple = ()  # the two (source, position) keys of the planted exact duplicate
    dup_text: str = ""
    texts: list = field(default_factory=list)

    def text(self) -> str:
        return self.texts.pop()

    def jsonl(self, path: Path, source: str, items: list, sep: bytes = b"\n", tail: bytes = b"",
              compress=None) -> bytes:
        """Write `items` (("valid", line, id, expected) | ("bad", line, reasons) | ("blank", line)) as lines."""
        lines = []
        for position, item in enumerate(items, start=1):
            assert b"\n" not in item[1]
            lines.append(item[1])
            if item[0] == "valid":
                self.valid[(source, position)] = (item[2], item[3])
            elif item[0] == "bad":
                self.bad[(str(path), position)] = item[2]
        data = sep.join(lines) + sep + tail
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(compress(data) if compress else data)
        self.listed.add(source)
        return data

    def junk(self, path: Path, source: str, data: bytes) -> None:
        """A file of non-records: every non-blank line must be quarantined as some kind of not-a-record."""
        path.write_bytes(data)
        for position, line in enumerate(data.split(b"\n"), start=1):
            if line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if line.rstrip(b"\r").strip():
                self.bad[(str(path), position)] = _NOT_A_RECORD
        self.listed.add(source)

    def file_error(self, path: Path, source: str, position: int = 1) -> None:
        self.bad[(str(path), position)] = {"read_error"}
        self.listed.add(source)


def _doc(c: Corpus, doc_id: str, text: Optional[str] = None) -> tuple:
    text = text if text is not None else c.text()
    rec = {"id": doc_id, "text": text}
    return ("valid", json.dumps(rec, ensure_ascii=False).encode("utf-8"), doc_id, normalize_text(text))


def _valid_texts(shared: Path, n: int) -> list[str]:
    """Distinct multi-sentence documents in several languages (never near duplicates of each other)."""
    langs = ("en", "de", "fr", "es", "ru", "zh", "ja", "pt")
    by_lang: dict[str, list[str]] = {lang: [] for lang in langs}
    with gzip.open(shared / "corpus" / "lid_dev.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["lang"] in by_lang and len(by_lang[rec["lang"]]) < 3 * n:
                by_lang[rec["lang"]].append(rec["text"])
    texts = []
    for i in range(n):
        lang = langs[i % len(langs)]
        k = i // len(langs)
        texts.append(" ".join(by_lang[lang][3 * k:3 * k + 3]))
    assert len(set(texts)) == n and all(len(t) > 40 for t in texts)
    return texts


def _escaped(text: str) -> bytes:
    """`text` as the inside of a JSON string (ASCII-escaped), so raw bytes can be spliced around it."""
    return json.dumps(text)[1:-1].encode("ascii")


def _plant_dir_source(c: Corpus) -> None:
    """inputs[0]: a directory (os.walk), category web. Sources are named d/..., urls are full paths."""
    d = c.root / "d"
    d.mkdir()
    # One CRLF file holding every per-line problem; valid lines in between must survive.
    t_nul, t_raw_nul, t_tab, t_sur, t_sur_id, t_bom_mid, t_crlf = (c.text() for _ in range(7))
    bom_first = c.text()
    items = [
        ("valid", b"\xef\xbb\xbf" + json.dumps({"text": bom_first}).encode(), stable_id("d/good.jsonl", 1),
         normalize_text(bom_first)),  # BOM + no id: stable id from (source, position)
        ("valid", b'{"id": "nul-escaped", "text": "' + _escaped(t_nul) + b'\\u0000 end\\u0000"}', "nul-escaped",
         normalize_text(t_nul + " end")),  # NULs inside the text are removed by normalize
        ("valid", b'{"id": "nul-raw", "text": "' + _escaped(t_raw_nul) + b'\x00 raw\x00"}', "nul-raw",
         normalize_text(t_raw_nul + " raw")),  # a raw NUL byte inside a string: lenient JSON, then normalized away
        ("valid", b'{"id": "tab-raw", "text": "' + _escaped(t_tab) + b'\tafter tab"}', "tab-raw",
         normalize_text(t_tab + " after tab")),  # a raw tab inside a string (strict JSON rejects it)
        ("valid", json.dumps({"id": "surrogate", "text": t_sur + " \ud800 lone \udfff"}).encode(), "surrogate",
         normalize_text(t_sur + " \ufffd lone \ufffd")),
        ("valid", json.dumps({"id": "sur\udc80id", "text": t_sur_id}).encode(), "sur\ufffdid",
         normalize_text(t_sur_id)),
        ("valid", json.dumps({"id": "crlf-inside", "text": t_crlf + "\r\nsecond line\rthird"}).encode(),
         "crlf-inside", normalize_text(t_crlf + "\nsecond line\nthird")),
        ("blank", b""),
        ("blank", b"   \t "),
        ("bad", b'{"id": "broken", "text": "no closing brace"', {"invalid_json"}),
        ("bad", b"42", {"not_an_object"}),
        ("bad", b'"a line that is a string"', {"not_an_object"}),
        ("bad", b"[1, 2, 3]", {"not_an_object"}),
        ("bad", b"null", {"not_an_object"}),
        ("bad", b"true", {"not_an_object"}),
        ("bad", b'{"id": "t-num", "text": 12345}', {"text_not_string"}),
        ("bad", b'{"id": "t-list", "text": ["a", "list"]}', {"text_not_string"}),
        ("bad", b'{"id": "t-obj", "text": {"nested": "object"}}', {"text_not_string"}),
        ("bad", b'{"id": "t-bool", "text": false}', {"text_not_string"}),
        ("bad", b'{"id": "t-null", "text": null}', {"missing_text"}),
        ("bad", b'{"id": "no-text", "body": "elsewhere"}', {"missing_text"}),
        ("bad", b'{"id": "blank-text", "text": "  \\n\\t  "}', {"empty_text"}),
        ("bad", b'{"id": "ctrl-only", "text": "\\u0000\\u0001\\u0007"}', {"empty_after_normalize"}),
        ("bad", b'{"id": "bom-only", "text": "\\ufeff\\ufeff"}', {"empty_after_normalize"}),
        ("bad", b'{"id": {"a": 1}, "text": "an id that is an object"}', {"invalid_id"}),
        ("bad", b'{"id": true, "text": "an id that is a boolean"}', {"invalid_id"}),
        ("bad", b'{"id": 1.5, "text": "an id that is a float"}', {"invalid_id"}),
        ("bad", b'{"id": "latin1", "text": "caf\xe9"}', {"invalid_utf8"}),
        ("bad", b'{"id": "cesu", "text": "raw surrogate \xed\xa0\x80 bytes"}', {"invalid_utf8"}),
        ("bad", b'{"id": "overlong", "text": "\xc0\xaf"}', {"invalid_utf8"}),
        ("bad", b"\x00\x00\x00\x00", {"invalid_json"}),
        ("bad", b'{"id": "nul-outside"}\x00', {"invalid_json"}),
        ("bad", b"[" * 200_000 + b"]" * 200_000, {"invalid_json"}),
        ("bad", b'{"id": "deep", "text": "x", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {"invalid_json"}),
        ("bad", b'{"id": "bigint", "text": "fine text", "n": ' + b"7" * 5000 + b"}", {"invalid_json"}),
        ("bad", b'{"id": "nan", "text": NaN}', {"text_not_string"}),
        ("valid", b"\xef\xbb\xbf" + json.dumps({"id": "bom-mid", "text": t_bom_mid}).encode(), "bom-mid",
         normalize_text(t_bom_mid)),  # a BOM at a line start mid-file (files concatenated with cat)
        _doc(c, "same-id"),  # duplicate ids, different texts: both kept
        _doc(c, "same-id"),
        ("bad", b"\x00" * 64, {"invalid_json"}),  # NUL padding at the end of a crashed write, no newline
    ]
    last = items.pop()
    c.jsonl(d / "good.jsonl", "d/good.jsonl", items, sep=b"\r\n", tail=last[1])
    c.bad[(str(d / "good.jsonl"), len(items) + 1)] = last[2]

    # A 100 MB single line between valid lines, written in 1 MiB pieces.
    huge = d / "huge.jsonl"
    before, after1, after2 = _doc(c, "before-huge"), _doc(c, "after-huge-1"), _doc(c, "after-huge-2")
    with open(huge, "wb") as f:
        f.write(before[1] + b"\n" + b'{"id": "huge", "text": "')
        piece = b"a" * (1 << 20)
        for _ in range(100):
            f.write(piece)
        f.write(b'"}\n' + after1[1] + b"\n" + after2[1] + b"\n")
    assert huge.stat().st_size > 100 * (1 << 20)
    c.valid[("d/huge.jsonl", 1)] = before[2:]
    c.bad[(str(huge), 2)] = {"oversized_record"}
    c.valid[("d/huge.jsonl", 3)] = after1[2:]
    c.valid[("d/huge.jsonl", 4)] = after2[2:]
    c.listed.add("d/huge.jsonl")

    # Truncated gzip: a whole first member, then a second member cut inside its data.
    head = [_doc(c, f"gz-{i}") for i in range(3)]
    lost = b"".join(json.dumps({"id": f"lost-{i}", "text": f"never read {i}"}).encode() + b"\n" for i in range(50))
    member2 = gzip.compress(lost, mtime=0)
    c.jsonl(d / "cut.jsonl.gz", "d/cut.jsonl.gz", head,
            compress=lambda data: gzip.compress(data, mtime=0) + member2[:30])
    c.file_error(d / "cut.jsonl.gz", "d/cut.jsonl.gz", position=len(head) + 1)

    # Truncated zstd: a whole first frame, then a second frame cut in half.
    head = [_doc(c, f"zst-{i}") for i in range(3)]
    frame2 = zstandard.ZstdCompressor().compress(lost)
    c.jsonl(d / "cut.jsonl.zst", "d/cut.jsonl.zst", head,
            compress=lambda data: zstandard.ZstdCompressor().compress(data) + frame2[: len(frame2) // 2])
    c.file_error(d / "cut.jsonl.zst", "d/cut.jsonl.zst", position=len(head) + 1)

    # Not what the name says: a gzip archive and UTF-16 text named .jsonl, plain text named .gz / .zst.
    c.junk(d / "binary.jsonl", "d/binary.jsonl", gzip.compress(bytes(range(256)) * 64, mtime=0)
           + bytes(range(256)))
    c.junk(d / "utf16.jsonl", "d/utf16.jsonl",
           "\n".join(json.dumps({"id": f"u16-{i}", "text": "utf sixteen"}) for i in range(3)).encode("utf-16"))
    (d / "plain.jsonl.gz").write_bytes(b'{"id": "p", "text": "not gzipped"}\n')
    c.file_error(d / "plain.jsonl.gz", "d/plain.jsonl.gz")
    (d / "plain.jsonl.zst").write_bytes(b'{"id": "p", "text": "not zstd"}\n')
    c.file_error(d / "plain.jsonl.zst", "d/plain.jsonl.zst")

    # Empty files of every format: no records, no quarantine rows.
    (d / "empty.jsonl").write_bytes(b"")
    (d / "blank.jsonl").write_bytes(b"\n\r\n   \n\t\n")
    (d / "empty.jsonl.gz").write_bytes(gzip.compress(b"", mtime=0))
    (d / "zero.jsonl.gz").write_bytes(b"")
    (d / "empty.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b""))
    (d / "zero.jsonl.zst").write_bytes(b"")
    c.listed.update({"d/empty.jsonl", "d/blank.jsonl", "d/empty.jsonl.gz", "d/zero.jsonl.gz",
                     "d/empty.jsonl.zst", "d/zero.jsonl.zst"})

    _plant_unopenable(c, d, "d/")

    # A directory symlink to its parent (not followed by a directory source) and a directory named .jsonl
    # (a directory: walked like any other).
    c.jsonl(d / "sub" / "inner.jsonl", "d/sub/inner.jsonl", [_doc(c, "inner")])
    os.symlink("..", d / "sub" / "up")
    c.jsonl(d / "y.jsonl" / "part.jsonl", "d/y.jsonl/part.jsonl", [_doc(c, "in-dir-named-jsonl")])

    # A file name that is not UTF-8: its `source` carries U+FFFD instead of a surrogate escape.
    try:
        fd = os.open(os.fsencode(d) + b"/caf\xe9.jsonl", os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError:  # a file system that insists on UTF-8 names
        pass
    else:
        bad_name_doc = _doc(c, "bad-name")
        os.write(fd, bad_name_doc[1] + b"\n{broken\n")
        os.close(fd)
        c.valid[("d/caf\ufffd.jsonl", 1)] = bad_name_doc[2:]
        c.bad[(str(d) + "/caf\ufffd.jsonl", 2)] = {"invalid_json"}
        c.listed.add("d/caf\ufffd.jsonl")
        os.symlink(b"gone", os.fsencode(d) + b"/dang\xff.jsonl")  # ... and its error message quotes the name
        c.file_error(Path(str(d) + "/dang\ufffd.jsonl"), "d/dang\ufffd.jsonl")

    # The exact duplicate, first copy; and an id reused by another document.
    c.dup_text = c.text()
    c.jsonl(d / "dup.jsonl", "d/dup.jsonl", [_doc(c, "dup-1", c.dup_text), _doc(c, "reused-id")])
    c.dup_pair = (("d/dup.jsonl", 1),)


def _plant_unopenable(c: Corpus, folder: Path, prefix: str) -> None:
    """A dangling symlink, a symlink loop and (when not root) a file without permissions: one
    read_error row each."""
    os.symlink("does-not-exist.jsonl", folder / "x.jsonl")
    os.symlink("b.jsonl", folder / "a.jsonl")
    os.symlink("a.jsonl", folder / "b.jsonl")
    names = ["x.jsonl", "a.jsonl", "b.jsonl"]
    if not ROOT_USER:
        (folder / "noperm.jsonl").write_bytes(json.dumps({"id": "np", "text": "unreadable"}).encode() + b"\n")
        (folder / "noperm.jsonl").chmod(0)
        names.append("noperm.jsonl")
    for name in names:
        c.file_error(folder / name, prefix + name)


def _plant_glob_source(c: Corpus) -> None:
    """inputs[1]: the glob g/**/*.jsonl, category web. Below their own roots, d/dup.jsonl and g/dup.jsonl
    are both dup.jsonl: so every source is named below the root of all inputs."""
    g = c.root / "g"
    c.jsonl(g / "sub" / "deep.jsonl", "g/sub/deep.jsonl", [_doc(c, "deep-1"), _doc(c, "deep-2")])
    os.symlink("..", g / "sub" / "up")  # a directory loop: g/sub/up/sub/up/... must not be walked
    _plant_unopenable(c, g, "g/")
    (g / "y.jsonl").mkdir()  # matched by the glob but not a file: one read_error row
    c.file_error(g / "y.jsonl", "g/y.jsonl")
    c.jsonl(g / "dup.jsonl", "g/dup.jsonl", [_doc(c, "dup-1", c.dup_text)])  # the exact duplicate, second copy
    c.dup_pair = c.dup_pair + (("g/dup.jsonl", 1),)
    c.jsonl(g / "ids.jsonl", "g/ids.jsonl", [_doc(c, "reused-id")])


def _plant_category_source(c: Corpus) -> None:
    """inputs[2]: one file with the category, code language and path taken from record fields."""
    code_a = "def alpha(values):\n    total = 0\n    for v in values:\n        total += v * 3\n    return total\n"
    code_b = "fn beta(x: u32) -> u32 {\n    let y = x.wrapping_mul(7);\n    y ^ 0x5a5a\n}\n"
    web = c.text()
    items = [
        ("valid", json.dumps({"id": "code-a", "kind": "code", "text": code_a, "code_lang": "python",
                              "path": "src/a.py"}).encode(), "code-a", normalize_text(code_a, is_code=True)),
        ("bad", json.dumps({"id": "cat-sur", "kind": "b\ud800ooks", "text": "a category with a lone surrogate"})
         .encode(), {"unknown_category"}),
        ("valid", json.dumps({"id": "code-b", "kind": "code", "text": code_b, "code_lang": "ru\udc80st",
                              "path": "src/b\ud800.rs"}).encode(), "code-b", normalize_text(code_b, is_code=True)),
        ("bad", json.dumps({"id": "no-kind", "text": "no category at all"}).encode(), {"missing_category"}),
        ("bad", json.dumps({"id": "list-kind", "kind": ["web"], "text": "category is a list"}).encode(),
         {"unknown_category"}),
        ("valid", json.dumps({"id": "cat-web", "kind": "web", "text": web}).encode(), "cat-web", normalize_text(web)),
    ]
    c.jsonl(c.root / "cats.jsonl", "cats.jsonl", items)


def _plant_parquet_source(c: Corpus) -> None:
    """inputs[3]: a directory of Parquet files (positions are 0-based row indexes)."""
    p = c.root / "p"
    p.mkdir()
    t0, t3 = c.text(), c.text()
    pq.write_table(pa.table({"id": ["pq-0", "pq-1", "pq-2", "pq-3"], "text": [t0, None, "", t3]}), p / "good.parquet")
    c.valid[("p/good.parquet", 0)] = ("pq-0", normalize_text(t0))
    c.bad[(str(p / "good.parquet"), 1)] = {"missing_text"}
    c.bad[(str(p / "good.parquet"), 2)] = {"empty_text"}
    c.valid[("p/good.parquet", 3)] = ("pq-3", normalize_text(t3))
    whole = (p / "good.parquet").read_bytes()
    (p / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    c.file_error(p / "truncated.parquet", "p/truncated.parquet", position=0)
    (p / "zero.parquet").write_bytes(b"")
    c.file_error(p / "zero.parquet", "p/zero.parquet", position=0)
    c.listed.add("p/good.parquet")


def build_corpus(root: Path, shared: Path) -> Corpus:
    c = Corpus(root, texts=_valid_texts(shared, 48))
    _plant_dir_source(c)
    _plant_glob_source(c)
    _plant_category_source(c)
    _plant_parquet_source(c)
    return c


def _config(root: Path, out: Path):
    return config_from_dict({
        "inputs": [
            {"path": str(root / "d"), "category": "web"},
            {"path": str(root / "g") + "/**/*.jsonl", "category": "web"},
            {"path": str(root / "cats.jsonl"), "category_field": "kind", "code_lang_field": "code_lang",
             "path_field": "path"},
            {"path": str(root / "p"), "category": "books"},
        ],
        "output": str(out),
        "ray": {"num_cpus": 2},
        "dedup": {"num_partitions": 2},
    })


# --------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, shared_dir, ray_local):
    root = tmp_path_factory.mktemp("hostile")
    corpus = build_corpus(root, shared_dir)
    out = tmp_path_factory.mktemp("hostile_out") / "out"
    stats = run_clean(_config(root, out))
    yield corpus, out, stats
    for p in (root / "d" / "noperm.jsonl", root / "g" / "noperm.jsonl"):
        if p.exists():
            p.chmod(0o644)


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


@pytest.mark.timeout(300)
def test_every_bad_record_is_quarantined_with_file_position_and_reason(hostile_run):
    corpus, out, stats = hostile_run
    rows = pq.read_table(out / "quarantine").to_pylist()
    got = {}
    for r in rows:
        key = (r["source_file"], r["position"])
        assert key not in got, f"two quarantine rows for {key}"
        got[key] = r["reason"]
    missing = {k: v for k, v in corpus.bad.items() if k not in got}
    unexpected = {k: v for k, v in got.items() if k not in corpus.bad}
    assert not missing, f"planted bad records not in quarantine: {missing}"
    assert not unexpected, f"quarantined but not planted as bad: {unexpected}"
    wrong = {k: (got[k], allowed) for k, allowed in corpus.bad.items() if _reason_kind(got[k]) not in allowed}
    assert not wrong, f"unexpected reasons: {wrong}"
    # File-level reasons name the cause.
    d, g = corpus.root / "d", corpus.root / "g"
    assert "Too many levels of symbolic links" in got[(str(d / "a.jsonl"), 1)]
    assert "No such file" in got[(str(d / "x.jsonl"), 1)]
    assert "directory" in got[(str(g / "y.jsonl"), 1)].lower()
    huge = next(r for r in rows if r["source_file"] == str(d / "huge.jsonl"))
    assert huge["n_chars"] > 100 * (1 << 20) and 0 < len(huge["raw"]) <= ReadConfig().raw_preview_chars
    assert all(len(r["raw"]) <= ReadConfig().raw_preview_chars for r in rows)


@pytest.mark.timeout(300)
def test_every_valid_document_is_kept_normalized(hostile_run):
    corpus, out, stats = hostile_run
    cleaned = pads.dataset(out / "cleaned", format="parquet", partitioning="hive").to_table().to_pylist()
    got = {}
    for r in cleaned:
        key = (r["source"], r["position"])
        assert key not in got, f"{key} written twice"
        got[key] = r
    expected = dict(corpus.valid)
    # exactly one copy of the planted exact duplicate is kept: the smallest (id, source, position) ...
    kept_copy, dropped_copy = corpus.dup_pair  # "d/dup.jsonl" sorts before "g/dup.jsonl"
    del expected[dropped_copy]
    assert kept_copy in got and dropped_copy not in got
    dups = pq.read_table(out / "duplicates").to_pylist()
    # ... and one is in duplicates/, each side located in its input (both copies have the id dup-1)
    assert dups == [{"id": "dup-1", "source": dropped_copy[0], "position": dropped_copy[1], "duplicate_of": "dup-1",
                     "duplicate_of_source": kept_copy[0], "duplicate_of_position": kept_copy[1], "stage": "exact"}]

    missing = sorted(k for k in expected if k not in got)
    unexpected = sorted(k for k in got if k not in expected)
    assert not missing, f"valid documents lost: {missing}"
    assert not unexpected, f"documents that were not planted as valid: {unexpected}"
    for key, (doc_id, text) in expected.items():
        assert got[key]["id"] == doc_id, key
        if text is not None:
            assert got[key]["text"] == text, key
    # What normalize does to hostile-but-valid text, spelled out.
    by_id = {r["id"]: r for r in cleaned}
    assert "\x00" not in by_id["nul-escaped"]["text"] and "\x00" not in by_id["nul-raw"]["text"]
    assert by_id["surrogate"]["text"].count("\ufffd") == 2
    assert "\r" not in by_id["crlf-inside"]["text"]
    assert not any("\ufeff" in r["text"] or "\r" in r["text"] for r in cleaned)
    assert (by_id["code-a"]["code_lang"], by_id["code-b"]["code_lang"]) == ("Python", "Rust")
    assert sum(1 for r in cleaned if r["id"] == "same-id") == 2
    assert sum(1 for r in cleaned if r["id"] == "reused-id") == 2


@pytest.mark.timeout(300)
def test_accounting_identity_holds_overall_and_per_stage(hostile_run):
    corpus, out, stats = hostile_run
    n_bad, n_valid = len(corpus.bad), len(corpus.valid)
    acc = stats["accounting"]
    assert acc["balanced"] and acc["read"] == acc["kept"] + acc["dropped"] + acc["quarantined"]
    assert acc == {"read": n_bad + n_valid, "kept": n_valid - 1, "dropped": 1, "quarantined": n_bad, "balanced": True}

    def total(groups: dict) -> int:
        return sum(v["docs"] for v in groups.values())

    def balanced(view: dict) -> bool:
        return view["in"]["docs"] == view["kept"]["docs"] + total(view["dropped"]) + total(view["quarantined"])

    totals = stats["totals"]
    assert totals["read"]["docs"] == totals["kept"]["docs"] + total(totals["dropped"]) + total(totals["quarantined"])
    assert totals["read"]["docs"] == acc["read"] and totals["kept"]["docs"] == acc["kept"]
    stages = stats["stages"]
    assert stages["read"]["in"]["docs"] == acc["read"]
    previous_kept = None
    for name, view in stages.items():
        assert balanced(view), name
        if previous_kept is not None:
            assert view["in"]["docs"] == previous_kept, name
        previous_kept = view["kept"]["docs"]
        for split in ("by_category", "by_language"):
            assert all(balanced(v) for v in view[split].values()), (name, split)
            assert sum(v["in"]["docs"] for v in view[split].values()) == view["in"]["docs"], (name, split)
    assert previous_kept == acc["kept"]
    read_q = stages["read"]["quarantined"]
    assert read_q["read_error"]["docs"] == sum(1 for v in corpus.bad.values() if v == {"read_error"})
    assert read_q["oversized_record"]["docs"] == 1
    assert stages["normalize"]["quarantined"]["empty_after_normalize"]["docs"] == 2
    assert {k: v["docs"] for k, v in stages["exact_dedup"]["dropped"].items()} == {"exact_duplicate": 1}
    assert stages["near_dedup"]["dropped"] == {}


@pytest.mark.timeout(300)
def test_listing_keeps_broken_entries_and_does_not_follow_loops(hostile_run):
    corpus, out, stats = hostile_run
    sources = stats["inputs"]["sources"]
    assert corpus.listed <= set(sources), sorted(corpus.listed - set(sources))
    assert not [s for s in sources if "/up/" in s], "walked into a symlink loop"
    assert sources.count("g/sub/deep.jsonl") == 1


# --------------------------------------------------------------------------- special files, without Ray


def _read_with_timeout(path: Path, seconds: float = 20.0) -> list:
    result: list = []

    def target():
        f = InputFile(0, 0, str(path), path.name, "jsonl")
        for table in read_file(f, InputSource(path=str(path), category="web"), ReadConfig()):
            result.extend(table.to_pylist())
        result.append("done")

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert result and result[-1] == "done", f"reading {path} did not finish in {seconds}s"
    return result[:-1]


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_device_named_jsonl_are_read_errors_not_hangs(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)  # open() for reading would block until a writer appears
    rows = _read_with_timeout(fifo)
    assert [(r["position"], _reason_kind(r["reason"])) for r in rows] == [(1, "read_error")]
    assert "not a regular file" in rows[0]["reason"]
    if os.path.exists("/dev/zero"):
        zero = tmp_path / "zero.jsonl"
        os.symlink("/dev/zero", zero)  # an endless stream without a newline
        rows = _read_with_timeout(zero)
        assert [(r["position"], _reason_kind(r["reason"])) for r in rows] == [(1, "read_error")]


@pytest.mark.timeout(60)
def test_glob_through_two_links_to_ancestors_lists_each_file_once(tmp_path):
    # glob.glob(recursive=True) follows both links at every level: 2**40 paths before ELOOP stops it.
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.jsonl").write_text('{"text": "one"}\n')
    (tmp_path / "a" / "b" / "two.jsonl").write_text('{"text": "two"}\n')
    os.symlink("..", tmp_path / "a" / "b" / "up1")
    os.symlink("../..", tmp_path / "a" / "b" / "up2")
    # Config() directly: config validation's own glob.glob check (pipeline/config.py) has the same blow-up.
    cfg = Config(inputs=[InputSource(path=str(tmp_path) + "/**/*.jsonl", category="web")], output=str(tmp_path / "_o"))
    assert [f.source for f in list_input_files(cfg)] == ["a/b/two.jsonl", "a/one.jsonl"]
