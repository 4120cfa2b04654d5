"""The census: per-file rows, their summary, and the driver's head start while Ray starts."""
from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from tokenizer_training.census import CensusHeadStart, census_file, census_head_start, summarize
from tokenizer_training.sample_ray import run_census
from tokenizer_training.sampling import SKIPPED

LANGS = frozenset({"en", "zh"})


@pytest.fixture()
def files(tmp_path):
    """Six files of different sizes: en, zh, an unlisted language and one broken line each."""
    paths = []
    for k in range(6):
        path = tmp_path / f"part-{k}.jsonl"
        rows = [{"id": f"{k}-{i}", "text": f"doc {i} " * (k + 1), "lang": ("en", "zh", "tl")[i % 3],
                 "category": "web"} for i in range(30 * (k + 1))]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n", encoding="utf-8")
        paths.append(str(path))
    return paths


def test_summary_counts_every_file_and_is_order_free(files):
    rows = [census_file(f, LANGS) for f in files]
    census = summarize(rows)
    assert census == summarize(rows[::-1])
    assert census.bad_records == 6
    assert sum(census.buckets.docs.values()) == 30 * (1 + 2 + 3 + 4 + 5 + 6)
    assert census.buckets.docs[SKIPPED] == sum(census.buckets.docs.values()) // 3
    assert census.buckets.bytes["en"] == sum(len(f"doc {i} " * (k + 1)) for k in range(6)
                                             for i in range(0, 30 * (k + 1), 3))


def test_head_start_takes_every_file_given_time(files):
    with census_head_start(files, LANGS, threads=2) as head_start:
        rows = head_start.results()
        assert head_start.hand_over() == []
    assert summarize(rows) == summarize([census_file(f, LANGS) for f in files])


def test_hand_over_gives_back_the_files_not_started_largest_first(files):
    head_start = CensusHeadStart(files, LANGS, threads=0)
    assert head_start.hand_over() == files[::-1] and head_start.results() == []


def test_abandoned_file_yields_no_row(files):
    abandon = threading.Event()
    abandon.set()
    assert census_file(files[0], LANGS, abandon) is None


def test_a_file_error_is_raised_by_results(tmp_path, files):
    bad = tmp_path / "no-text.parquet"
    pq.write_table(pa.table({"lang": ["en"]}), bad)
    head_start = CensusHeadStart([str(bad)] + files, LANGS, threads=1)
    with pytest.raises(ConfigError, match="no 'text' column"):
        head_start.results()
    head_start.close()


def test_ray_and_head_start_split_the_files_to_the_same_census(ray_local, files):
    on_ray = run_census(files, LANGS)
    with census_head_start(files, LANGS, threads=1) as racing:  # splits the files at random
        mixed = run_census(files, LANGS, racing)
    with census_head_start(files, LANGS, threads=1) as ahead:
        ahead.results()  # every file done before "Ray is up"
        local = run_census(files, LANGS, ahead)
    assert on_ray == mixed == local
