"""Input listing: every file gets a `source` name no other file has, and no file is listed twice."""
from __future__ import annotations

import pytest

from pipeline.config import Config, ConfigError, InputSource
from pipeline.sources import list_input_files


def _files(tmp_path, *names: str) -> None:
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('{"text": "x"}\n')


def _sources(tmp_path, *paths: str) -> list[str]:
    cfg = Config(inputs=[InputSource(path=str(tmp_path / p), category="web") for p in paths], output=str(tmp_path / "o"))
    return [f.source for f in list_input_files(cfg)]


def test_names_are_relative_to_each_source_when_they_do_not_clash(tmp_path):
    _files(tmp_path, "corpus/web/a.jsonl", "corpus/web/b.jsonl", "corpus/books/c.jsonl.gz", "d.parquet")
    assert _sources(tmp_path, "corpus/web", "corpus/books/*.gz", "d.parquet") == [
        "web/a.jsonl", "web/b.jsonl", "c.jsonl.gz", "d.parquet"]


def test_clashing_names_are_taken_from_the_root_of_all_sources(tmp_path):
    # Both directories hold data/in.jsonl relative to their own root: one (source, position) for two
    # different records would make their ids and dedup keys the same.
    _files(tmp_path, "a/data/in.jsonl", "b/data/in.jsonl", "c/other.jsonl")
    assert _sources(tmp_path, "a/data", "b/data", "c/other.jsonl") == [
        "a/data/in.jsonl", "b/data/in.jsonl", "c/other.jsonl"]
    assert _sources(tmp_path, "a/data/in.jsonl", "b/data/in.jsonl") == ["a/data/in.jsonl", "b/data/in.jsonl"]


@pytest.mark.parametrize("second", ["in.jsonl", "*.jsonl", "link.jsonl", "."])
def test_a_file_two_sources_list_is_refused(tmp_path, second):
    _files(tmp_path, "in.jsonl")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    with pytest.raises(ConfigError, match=r"inputs\[0\] and inputs\[1\] both list .*read twice"):
        _sources(tmp_path, "in.jsonl", second)


def test_a_link_inside_one_source_is_not_an_overlap(tmp_path):
    # Two names for one file inside a source are the corpus's own copies: exact dedup removes one.
    _files(tmp_path, "d/in.jsonl")
    (tmp_path / "d" / "link.jsonl").symlink_to(tmp_path / "d" / "in.jsonl")
    assert _sources(tmp_path, "d") == ["d/in.jsonl", "d/link.jsonl"]
