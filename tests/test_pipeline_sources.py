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
    cfg = Config(inputs=[InputSource(path=str(tmp_path / p), category="web") for p in paths],
                 output=str(tmp_path / "_out"))  # `_`: never listed, even with "." as an input
    return [f.source for f in list_input_files(cfg)]


def test_names_are_relative_to_each_source_when_they_do_not_clash(tmp_path):
    _files(tmp_path, "corpus/web/a.jsonl", "corpus/web/b.jsonl", "corpus/books/c.jsonl.gz", "d.parquet")
    assert _sources(tmp_path, "corpus/books", "corpus/web/*.jsonl", "d.parquet") == [
        "c.jsonl.gz", "a.jsonl", "b.jsonl", "d.parquet"]
    # one file, named by its directory, a glob or itself: one name, so records without ids get one id
    assert _sources(tmp_path, "corpus/web") == _sources(tmp_path, "corpus/web/*") == ["a.jsonl", "b.jsonl"]
    assert _sources(tmp_path, "corpus/web/a.jsonl") == ["a.jsonl"]


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


def test_a_path_that_exists_is_literal_even_with_glob_characters(tmp_path):
    # As a pattern, dump[1].jsonl matches dump1.jsonl: another file would be read in its place.
    _files(tmp_path, "br/dump[1].jsonl", "br/dump1.jsonl", "br/set[a]/x.jsonl")
    assert _sources(tmp_path, "br/dump[1].jsonl") == ["dump[1].jsonl"]
    assert _sources(tmp_path, "br/set[a]") == ["x.jsonl"]
    assert _sources(tmp_path, "br/dump[0-9].jsonl") == ["dump1.jsonl"]  # not a name: still a pattern


def test_hidden_and_underscore_directories_are_not_data(tmp_path):
    # Spark/Hadoop leave partial attempts under _temporary/; a checkout has .git/.
    _files(tmp_path, "data/a.jsonl", "data/.git/b.jsonl", "data/_temporary/0/c.jsonl", "data/sub/d.jsonl",
           "data/sub/_e.jsonl")
    assert _sources(tmp_path, "data") == ["a.jsonl", "sub/d.jsonl"]
    assert _sources(tmp_path, "data/**/*.jsonl") == ["a.jsonl", "sub/_e.jsonl", "sub/d.jsonl"]
    assert _sources(tmp_path, "data/_temporary/*/*.jsonl") == ["0/c.jsonl"]  # named in the pattern: read


def test_a_file_one_source_reaches_under_two_names_is_read_once(tmp_path, caplog):
    # Not an overlap of two inputs (nothing to refuse), but reading it twice would count its documents
    # twice in `read` and then again as exact duplicates.
    _files(tmp_path, "d/a.jsonl")
    (tmp_path / "d" / "link_a.jsonl").symlink_to(tmp_path / "d" / "a.jsonl")
    (tmp_path / "d" / "gone.jsonl").symlink_to(tmp_path / "d" / "missing.jsonl")  # dangles: listed, quarantined
    assert _sources(tmp_path, "d") == ["a.jsonl", "gone.jsonl"]
    assert _sources(tmp_path, "d/*.jsonl") == ["a.jsonl", "gone.jsonl"]
    assert "link_a.jsonl is" in caplog.text and "read once" in caplog.text


@pytest.mark.parametrize("source, output, refused", [
    ("data", "data/xdp-out", "read its own outputs"),
    ("data/**/*.jsonl", "data/a/xdp-out", "read its own outputs"),
    ("data/*/*.jsonl", "data/xdp-out", "read its own outputs"),  # would match xdp-out/stats.json
    ("out/cleaned", "out", "replaced while it is read"),
    ("data", "data", "read its own outputs"),
    ("out/raw", "out", None),  # next to the outputs, not among them
    ("data", "data/_xdp-out", None),  # listing skips _-prefixed directories
    ("data/*.jsonl", "data/xdp-out", None),  # the pattern reaches no file below xdp-out
    ("data/in.jsonl", "data/xdp-out", None),
])
def test_the_job_never_reads_its_own_output(tmp_path, source, output, refused):
    _files(tmp_path, "data/in.jsonl", "data/a/b.jsonl", "out/cleaned/c.jsonl", "out/raw/d.jsonl")
    cfg = Config(inputs=[InputSource(path=str(tmp_path / source), category="web")], output=str(tmp_path / output))
    if refused:
        with pytest.raises(ConfigError, match=refused):
            list_input_files(cfg)
    else:
        assert list_input_files(cfg)


def test_a_set_format_reads_the_records_of_a_directory_not_its_card(tmp_path):
    # A Hugging Face dataset folder: format: parquet must not read README.md or dataset_info.json as Parquet.
    _files(tmp_path, "hf/README.md", "hf/dataset_info.json", "hf/train.parquet", "hf/part-00000", "hf/x.yaml")

    def listed(path, fmt):
        cfg = Config(inputs=[InputSource(path=str(tmp_path / path), category="web", format=fmt)],
                     output=str(tmp_path / "_out"))
        return [(f.source, f.format) for f in list_input_files(cfg)]

    assert listed("hf", "parquet") == [("part-00000", "parquet"), ("train.parquet", "parquet")]
    assert listed("hf/*.json", "parquet") == [("dataset_info.json", "parquet")]  # named by the config: read
    assert listed("hf", None) == [("dataset_info.json", "jsonl"), ("train.parquet", "parquet")]
