"""`xdp langid` and `xdp tune-langid` end to end on files the test writes."""
from __future__ import annotations

import argparse
import gzip
import json

import pytest

from pipeline import langid_cli
from pipeline.config import ConfigError
from pipeline.langid_rules import LangIdRules

RECORDS = [
    {"id": 1, "text": "The committee will publish its final report early next week.", "meta": {"k": [1, 2]}},
    {"id": 2, "text": "Il comitato pubblicherà la relazione finale all'inizio della prossima settimana."},
    {"id": 3, "body": "no text field here"},
    {"id": 4, "text": "Комитет опубликует свой окончательный доклад\nв начале следующей недели."},
    {"id": 5, "text": "Habari za asubuhi, rafiki yangu mpendwa, karibu nyumbani kwetu leo."},
]


def xdp(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="xdp")
    langid_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def read_jsonl(path, opener=open):
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_langid_copies_records_and_adds_lang(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out" / "labelled.jsonl.gz"
    write_jsonl(src, RECORDS)
    assert xdp("langid", str(src), str(dst), "--batch-size", "2") == 0
    out = read_jsonl(dst, gzip.open)
    assert [r["lang"] for r in out] == ["en", "it", None, "ru", "other"]  # Swahili is not a target
    for before, after in zip(RECORDS, out):
        assert {k: v for k, v in after.items() if k not in ("lang", "lang_score")} == before
    assert out[2]["lang_score"] is None and 0.5 < out[0]["lang_score"] <= 1.0
    assert list(tmp_path.joinpath("out").iterdir()) == [dst]  # no temp files left behind


def test_langid_output_is_byte_stable_and_threshold_applies(tmp_path):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, RECORDS)
    xdp("langid", str(src), str(tmp_path / "a.jsonl"))
    xdp("langid", str(src), str(tmp_path / "b.jsonl"), "--batch-size", "1")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    xdp("langid", str(src), str(tmp_path / "c.jsonl"), "--threshold", "1.0")
    assert {r["lang"] for r in read_jsonl(tmp_path / "c.jsonl")} == {"other", None}


def test_langid_bad_line_names_the_line_and_writes_nothing(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [RECORDS[0], "", '{"id": 2, "text": "broken', RECORDS[1]])
    with pytest.raises(ConfigError, match=r"in.jsonl:3: not valid JSON"):
        xdp("langid", str(src), str(dst))
    write_jsonl(src, [RECORDS[0], "[1, 2]"])
    with pytest.raises(ConfigError, match=r"in.jsonl:2: expected a JSON object"):
        xdp("langid", str(src), str(dst))
    assert list(tmp_path.iterdir()) == [src]


def test_tune_langid_writes_loadable_rules_and_reports(tmp_path, capsys):
    rows = [{"text": r["text"], "lang": lang} for r, lang in zip(
        [RECORDS[0], RECORDS[1], RECORDS[3], RECORDS[4]], ["en", "it", "ru", "other"])] * 3
    dev = tmp_path / "dev.jsonl.gz"
    write_jsonl(dev, rows, gzip.open)
    out = tmp_path / "rules.json"
    assert xdp("tune-langid", str(dev), "--output", str(out), "--eval", str(dev), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dev.jsonl.gz:tuned"]["macro"] == 1.0
    assert {"tune:bare", "holdout:tuned", "dev.jsonl.gz:untuned"} <= set(report)
    assert LangIdRules.load(out).provenance["seed"] == 1


def test_output_gets_ordinary_permissions(tmp_path):
    import os

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, RECORDS[:1])
    xdp("langid", str(src), str(dst))
    mask = os.umask(0)
    os.umask(mask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~mask


def test_single_file_commands_name_a_line_that_is_not_utf8(tmp_path):
    from pipeline.langid_io import iter_json_records

    (tmp_path / "in.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=r"in\.jsonl:2: not valid UTF-8 \(byte 13\)"):
        list(iter_json_records(tmp_path / "in.jsonl"))


def test_a_truncated_archive_is_an_error_at_the_line_where_it_breaks(tmp_path):
    from pipeline.langid_io import iter_json_records

    data = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(5000)), mtime=0)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"cut\.jsonl\.gz:\d+: the file breaks here \(EOFError"):
        list(iter_json_records(tmp_path / "cut.jsonl.gz"))


def test_lone_surrogates_become_replacement_characters_and_a_bom_is_skipped(tmp_path):
    from pipeline.langid_io import iter_json_records

    (tmp_path / "in.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "lone \\ud800 here", "k": ["\\udc00"]}\n'
                                        b'{"text": "pair \\ud83d\\ude00"}\n')
    records = [rec for _, _, rec in iter_json_records(tmp_path / "in.jsonl")]
    assert records == [{"text": "lone \ufffd here", "k": ["\ufffd"]}, {"text": "pair \U0001F600"}]


def test_an_output_that_is_a_directory_is_refused_before_any_work(tmp_path):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, RECORDS)
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="OUT.jsonl .*out is a directory, not a file"):
        xdp("langid", str(src), str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]  # no temp file left
