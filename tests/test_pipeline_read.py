"""Read + validate + normalize without Ray: every malformed-record kind lands in quarantine."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.config import InputSource, ReadConfig
from pipeline.normalize import normalize_text
from pipeline.read import read_file, stable_id
from pipeline.sources import InputFile


def _read(path, fmt, spec=None, **read_kwargs) -> pa.Table:
    spec = spec or InputSource(path=str(path), category="web")
    f = InputFile(0, 0, str(path), path.name, fmt)
    tables = list(read_file(f, spec, ReadConfig(**read_kwargs)))
    return pa.concat_tables(tables) if tables else None


def _reasons(table) -> list:
    return [r.split(":")[0] if r else None for r in table.column("reason").to_pylist()]


def test_every_bad_record_kind_is_quarantined_with_position(tmp_path):
    lines = [
        json.dumps({"id": "good", "text": "Hello world, this is fine."}).encode(),
        b'{"id": "broken", "text": "no closing brace"',
        b'{"id": "utf8", "text": "caf\xe9"}',
        json.dumps({"id": "missing"}).encode(),
        json.dumps({"id": "empty", "text": "   "}).encode(),
        json.dumps({"id": "number", "text": 42}).encode(),
        json.dumps({"id": "list", "text": ["a", "b"]}).encode(),
        json.dumps([1, 2, 3]).encode(),
        json.dumps({"id": "big", "text": "x" * 5000}).encode(),
        json.dumps({"id": "ctrl", "text": "\u0000\u0001\u0002"}).encode(),
        b"[" * 100000 + b"]" * 100000,
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    table = _read(path, "jsonl", max_record_bytes=1000)
    assert table.num_rows == len(lines)  # one row per record: none dropped, none emitted twice
    reasons = dict(zip(table.column("position").to_pylist(), _reasons(table)))
    assert reasons == {1: None, 2: "invalid_json", 3: "invalid_utf8", 4: "missing_text", 5: "empty_text",
                       6: "text_not_string", 7: "text_not_string", 8: "not_an_object",
                       9: "oversized_record", 10: "empty_after_normalize", 11: "oversized_record"}
    bad = table.filter(pa.compute.is_valid(table.column("reason")))
    assert all(s == str(path) for s in bad.column("source").to_pylist())
    assert all(len(r) <= ReadConfig().raw_preview_chars for r in bad.column("raw").to_pylist())


def test_deeply_nested_json_is_invalid_not_a_crash(tmp_path):
    path = tmp_path / "nested.jsonl"
    path.write_text('{"text": ' + "[" * 50000 + "]" * 50000 + "}\n")
    assert _reasons(_read(path, "jsonl")) == ["invalid_json"]


def test_unknown_and_missing_category_from_field(tmp_path):
    path = tmp_path / "cats.jsonl"
    rows = [{"text": "a book", "kind": "books"}, {"text": "what", "kind": "novels"}, {"text": "none"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = InputSource(path=str(path), category_field="kind")
    table = _read(path, "jsonl", spec)
    assert _reasons(table) == [None, "unknown_category", "missing_category"]
    assert table.column("category").to_pylist()[:2] == ["books", "novels"]
    assert table.column("meta")[0].as_py() is None  # the category field is consumed, nothing else left


def test_bom_crlf_surrogates_and_stable_ids(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "first line"}).encode() + b"\r\n"
                     + b'{"text": "lone \\ud800 surrogate", "extra": 1}\r\n\r\n')
    table = _read(path, "jsonl")
    assert _reasons(table) == [None, None]
    assert table.column("text").to_pylist() == ["first line", "lone \ufffd surrogate"]
    assert table.column("id").to_pylist() == [stable_id("crlf.jsonl", 1), stable_id("crlf.jsonl", 2)]
    assert json.loads(table.column("meta")[1].as_py()) == {"extra": 1}


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_truncated_archive_keeps_good_records_and_reports_the_break(tmp_path, fmt):
    payload = b"".join(json.dumps({"id": str(i), "text": f"document number {i} " * 20}).encode() + b"\n"
                       for i in range(2000))
    data = gzip.compress(payload, mtime=0) if fmt == "jsonl.gz" else zstandard.ZstdCompressor().compress(payload)
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[: len(data) // 2])
    table = _read(path, fmt)
    reasons = _reasons(table)
    assert reasons[-1] == "read_error"
    assert reasons[:-1] and all(r is None for r in reasons[:-1])
    assert table.column("position")[-1].as_py() == len(reasons)
    assert table.column("category")[-1].as_py() == "web"  # the input's fixed category, as for every row


def test_binary_file_named_jsonl_is_quarantined(tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(bytes(range(256)) * 4)
    table = _read(path, "jsonl")
    # split at each byte 10 (newline): line 1 is bytes 0-9 (not JSON), lines 2-5 hold bytes >= 0x80 (not UTF-8)
    assert list(zip(table.column("position").to_pylist(), _reasons(table))) == \
        [(1, "invalid_json")] + [(i, "invalid_utf8") for i in range(2, 6)]


def test_parquet_input_validates_rows(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["ok text", None, ""], "lang_hint": ["x", "y", "z"]}),
                   path)
    table = _read(path, "parquet")
    assert _reasons(table) == [None, "missing_text", "empty_text"]
    assert table.column("position").to_pylist() == [0, 1, 2]
    # A row has no line to show: the quarantine keeps its JSON, strings cut to the preview length.
    assert [json.loads(r) for r in table.column("raw").to_pylist()[1:]] == [
        {"id": "b", "text": None, "lang_hint": "y"}, {"id": "c", "text": "", "lang_hint": "z"}]


def test_parquet_file_with_a_column_name_twice_is_a_read_error(tmp_path):
    """Arrow allows two columns named `text`; a row as a dict would keep the last without a word."""
    path = tmp_path / "twice.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["first"]), pa.array(["second"]), pa.array(["a"])],
                                        names=["text", "text", "id"]), path)
    table = _read(path, "parquet")
    assert table.column("reason").to_pylist() == ["read_error: column names used twice: text"]
    assert table.column("position").to_pylist() == [0]


def test_parquet_quarantine_counts_the_text_it_held(tmp_path):
    """A quarantined Parquet row's n_chars is its text's length (a JSONL row's is its line's): the
    stats' quarantined characters do not read 0 for Parquet inputs."""
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["y" * 3000, None, "   "], "n": [1, 2, 3]}), path)
    table = _read(path, "parquet", max_record_bytes=1000)
    assert _reasons(table) == ["oversized_record", "missing_text", "empty_text"]
    assert table.column("n_chars").to_pylist() == [3000, 0, 3]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok \xff"], pa.binary()).cast(pa.string(), safe=False)}), bad)
    table = _read(bad, "parquet")
    assert _reasons(table)[0].startswith("invalid_utf8") and table.column("n_chars").to_pylist() == [4]


def test_parquet_preview_of_an_oversized_row_is_cut(tmp_path):
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["y" * 100_000], "n": [7]}), path)
    table = _read(path, "parquet", max_record_bytes=1000, raw_preview_chars=50)
    assert _reasons(table) == ["oversized_record"]
    raw = table.column("raw")[0].as_py()
    assert len(raw) == 50 and raw.startswith('{"id": "a", "n": 7, "text": "yyy')


def test_code_keeps_indentation_prose_is_tidied():
    code = "def f(x):\r\n    return x\t# tab\u0007\n\n\n\n"
    assert normalize_text(code, is_code=True) == "def f(x):\n    return x\t# tab"
    prose = "  Cafe\u0301   au\tlait \n\n\n\n next\u200b line "
    assert normalize_text(prose) == "Café au lait\n\nnext\u200b line"


def test_meta_is_strict_json_even_for_nan_and_bytes(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["ok text"], "score": [float("nan")], "blob": [b"\xff\x00"],
                             "nested": [[float("-inf"), 1.0]]}), path)
    meta = _read(path, "parquet").column("meta")[0].as_py()

    def not_json(constant):
        raise AssertionError(f"{constant} is not a JSON number: {meta}")

    parsed = json.loads(meta, parse_constant=not_json)  # NaN, Infinity: what strict readers refuse
    assert parsed["score"] == "nan" and parsed["nested"] == ["-inf", 1.0] and isinstance(parsed["blob"], str)


def _bad_rows(table) -> list:
    bad = table.filter(pa.compute.is_valid(table.column("reason")))
    return list(zip(bad.column("position").to_pylist(), bad.column("reason").to_pylist()))


def _good_positions(table) -> list:
    return table.filter(pa.compute.is_null(table.column("reason"))).column("position").to_pylist()


def test_zstd_bad_checksum_keeps_every_decoded_record(tmp_path):
    # Every text byte is intact, only the frame checksum is off: all records were decoded before the
    # check failed, and the decompressor call that fails drops what it decoded.
    payload = b"".join(json.dumps({"id": str(i), "text": f"doc {i}"}).encode() + b"\n" for i in range(20000))
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(payload))
    data[-2] ^= 1
    path = tmp_path / "checksum.jsonl.zst"
    path.write_bytes(bytes(data))
    table = _read(path, "jsonl.zst")
    assert table.num_rows == 20001
    assert _good_positions(table) == list(range(1, 20001))
    assert table.column("id").to_pylist()[:20000] == [str(i) for i in range(20000)]
    [(position, reason)] = _bad_rows(table)
    assert position == 20001  # the line after the last complete one
    assert reason.startswith("read_error: ZstdError: ") and "checksum" in reason


def test_zstd_damaged_second_frame_keeps_the_first(tmp_path):
    first = b"".join(json.dumps({"id": str(i), "text": f"doc {i}"}).encode() + b"\n" for i in range(300))
    second = bytearray(zstandard.ZstdCompressor().compress(b'{"id": "lost", "text": "in frame two"}\n'))
    second[:4] = b"\x00\x00\x00\x00"  # its magic number is gone
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(first) + bytes(second))
    table = _read(path, "jsonl.zst")
    assert table.num_rows == 301
    assert _good_positions(table) == list(range(1, 301))
    [(position, reason)] = _bad_rows(table)
    assert position == 301
    assert reason.startswith("read_error: ZstdError: ") and "Unknown frame descriptor" in reason


def test_parquet_value_out_of_range_in_an_extra_column_costs_only_its_row(tmp_path):
    seconds = [1_600_000_000 + i for i in range(5000)]
    seconds[10] = 10 ** 12  # past year 9999: Python's datetime cannot hold it
    path = tmp_path / "crawl.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(5000)], "text": [f"doc {i}" for i in range(5000)],
                             "crawl_time": pa.array(seconds, pa.timestamp("s"))}), path)
    table = _read(path, "parquet")
    assert table.num_rows == 5000
    assert _good_positions(table) == [i for i in range(5000) if i != 10]
    assert _bad_rows(table) == [(10, "invalid_value: crawl_time: OverflowError: date value out of range")]
    raw = json.loads(table.column("raw")[10].as_py())
    assert raw["id"] == "10" and raw["text"] == "doc 10" and "out of range" in raw["crawl_time"]
    assert "crawl_time" in json.loads(table.column("meta")[11].as_py())  # good rows keep the column


def test_parquet_invalid_utf8_costs_only_its_row(tmp_path):
    texts = [f"doc {i}".encode() for i in range(5000)]
    texts[3000] = b"caf\xe9 au lait"  # Latin-1, not UTF-8; in the second batch of 2048
    path = tmp_path / "latin1.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(5000)],
                             "text": pa.array(texts, pa.binary()).view(pa.string())}), path)
    table = _read(path, "parquet")
    assert table.num_rows == 5000
    assert _good_positions(table) == [i for i in range(5000) if i != 3000]
    assert table.column("id").to_pylist()[2048:2050] == ["2048", "2049"]
    assert _bad_rows(table) == [(3000, "invalid_utf8: text: byte 3")]
    assert json.loads(table.column("raw")[3000].as_py()) == {"id": "3000", "text": "caf\ufffd au lait"}


def test_parquet_binary_text_is_read_where_it_is_utf8(tmp_path):
    # Some exports store text as binary; the bytes are the text when they decode.
    path = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": pa.array(["naïve café".encode(), b"caf\xe9"], pa.binary())}),
                   path)
    table = _read(path, "parquet")
    assert table.column("text").to_pylist()[0] == "naïve café"
    assert _bad_rows(table) == [(1, "invalid_utf8: text: byte 3")]


def _docs(n):
    return [{"id": f"d{i}", "text": f"Document {i}, with \"quotes\", [brackets], {{braces}} and a \\ backslash."}
            for i in range(n)]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_json_array_file_is_read_element_by_element(tmp_path, monkeypatch, indent, chunk):
    import pipeline.json_framing

    monkeypatch.setattr(pipeline.json_framing, "CHUNK", chunk)  # records and strings cut by chunk ends
    docs = _docs(40) + [[1, 2], {"id": "no text"}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(docs, indent=indent) + "\n")
    table = _read(path, "jsonl")
    assert table.column("position").to_pylist() == list(range(1, 43))
    assert table.column("id").to_pylist()[:40] == [d["id"] for d in docs[:40]]
    assert table.column("text").to_pylist()[:40] == [d["text"] for d in docs[:40]]
    assert _reasons(table)[40:] == ["not_an_object", "missing_text"]


def test_json_array_damage_keeps_the_elements_before_it(tmp_path):
    whole = json.dumps(_docs(3), indent=1)
    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(gzip.compress(whole[:-40].encode()))  # cut inside the third element
    table = _read(truncated, "jsonl.gz")
    assert _reasons(table) == [None, None, "invalid_json", "read_error"]
    assert table.column("position").to_pylist() == [1, 2, 3, 4]
    trailing = tmp_path / "trailing.json"
    trailing.write_text(whole + "\n{\"text\": \"after the array\"}\n")
    table = _read(trailing, "jsonl")
    assert _reasons(table) == [None, None, None, "read_error"]
    assert "closing bracket" in table.column("reason")[3].as_py()


def test_json_array_oversized_element_is_quarantined(tmp_path):
    docs = _docs(2)
    docs.insert(1, {"id": "big", "text": "x" * 5000})
    path = tmp_path / "big.json"
    path.write_text(json.dumps(docs))
    table = _read(path, "jsonl", max_record_bytes=1000)
    assert _reasons(table) == [None, "oversized_record", None]
    assert table.column("raw")[1].as_py().startswith('{"id": "big"')


def test_jsonl_whose_first_record_is_an_array_is_still_jsonl(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("[1, 2]\n" + "\n".join(json.dumps(d) for d in _docs(3)) + "\n")
    table = _read(path, "jsonl")
    assert _reasons(table) == ["not_an_object", None, None, None]
    assert table.column("position").to_pylist() == [1, 2, 3, 4]


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_pretty_printed_objects_are_one_record_each(tmp_path, monkeypatch, chunk):
    import pipeline.json_framing

    monkeypatch.setattr(pipeline.json_framing, "CHUNK", chunk)
    docs = _docs(5)
    path = tmp_path / "jq_output.json"  # `jq . docs.jsonl`: whole objects, one after another
    path.write_text("\n".join(json.dumps(d, indent=2) for d in docs) + "\n")
    table = _read(path, "jsonl")
    assert _reasons(table) == [None] * 5
    assert table.column("position").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("text").to_pylist() == [d["text"] for d in docs]
    meta = tmp_path / "dataset_info.json"
    meta.write_text(json.dumps({"features": {"text": {"dtype": "string"}}, "splits": {"train": 3}}, indent=2))
    assert _reasons(_read(meta, "jsonl")) == ["missing_text"]  # one record, not one per line


def test_jsonl_with_a_cut_first_line_is_still_read_line_by_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "cut off\n' + "\n".join(json.dumps(d) for d in _docs(3)) + "\n")
    table = _read(path, "jsonl")
    assert _reasons(table) == ["invalid_json", None, None, None]
    assert table.column("position").to_pylist() == [1, 2, 3, 4]
    unclosed = tmp_path / "unclosed.jsonl"  # the probe for a pretty-printed object gives up at the limit
    unclosed.write_text('{"text": {"nested": [\n' + "\n".join(json.dumps(d) for d in _docs(300)) + "\n")
    table = _read(unclosed, "jsonl", max_record_bytes=1000)
    assert _reasons(table) == ["invalid_json"] + [None] * 300


def test_pretty_printed_objects_cut_by_a_broken_archive_report_the_break(tmp_path):
    whole = "\n".join(json.dumps(d, indent=2) for d in _docs(3))
    late = tmp_path / "late.json.gz"
    late.write_bytes(gzip.compress(whole.encode())[:-12])  # the archive breaks in the last object
    table = _read(late, "jsonl.gz")
    assert _reasons(table)[:2] == [None, None] and _reasons(table)[-1] == "read_error"
    early = tmp_path / "early.json.gz"
    early.write_bytes(gzip.compress(json.dumps(_docs(1)[0], indent=2).encode() * 50)[:40])
    assert _reasons(_read(early, "jsonl.gz"))[-1] == "read_error"  # broken before the first object was whole
