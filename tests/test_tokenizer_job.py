"""End to end on a small local Ray: sample report, determinism across file layouts, errors, CLI."""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_tokenizer_train import synthetic_texts

from pipeline.config import Config, ConfigError, TokenizerConfig
from tokenizer_training import cli
from tokenizer_training.job import train_tokenizer, train_tokenizer_from_config
from tokenizer_training.memory import current_rss, release_heap
from tokenizer_training.sample_ray import stream_sample
from tokenizer_training.sampling import Tally, plan_sample
from tokenizer_training.sources import read_file

REPO = Path(__file__).resolve().parents[1]
VOCAB = 700
# Plenty of en/zh/ru, a little hi, no Arabic at all, some code, and a language outside the table.
DOCS = {"en": 150, "zh": 150, "ru": 100, "hi": 1, "de": 60}


def _records(seed: int = 0) -> list[dict]:
    records = []
    for lang, n in DOCS.items():
        for i, text in enumerate(synthetic_texts(lang, n, seed)):
            records.append({"id": f"{lang}-{i}", "text": text, "lang": lang, "category": "web"})
    for i in range(80):
        records.append({"id": f"py-{i}", "text": f"def f{i}(x):\n    return x * {i}\n", "lang": None,
                        "category": "code", "code_lang": "Python"})
    for i, text in enumerate(synthetic_texts("en", 30, seed=9)):
        records.append({"id": f"tl-{i}", "text": text, "lang": "tgl_Latn", "category": "web"})
    return records


def _write(path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus_dirs(tmp_path_factory):
    """The same documents as one file and as three files in another order."""
    records = _records()
    one = tmp_path_factory.mktemp("one")
    _write(one / "all.jsonl", records)
    three = tmp_path_factory.mktemp("three")
    for k in range(3):
        _write(three / f"part-{k}.jsonl", records[::-1][k::3])
    return one, three


def _cfg(**kw) -> TokenizerConfig:
    return dataclasses.replace(TokenizerConfig(vocab_size=VOCAB, sample_bytes=150_000, seed=3), **kw)


@pytest.fixture(scope="module")
def trained(ray_local, corpus_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return out, train_tokenizer(str(corpus_dirs[0]), str(out), _cfg(), show_progress=False)


def test_report_and_exact_size(trained):
    out, report = trained
    assert report["vocab_size"] == VOCAB
    saved = json.loads((out / "training_report.json").read_text())
    run = json.loads((out / "training_run.json").read_text())
    assert {**saved, **run} == report and set(run) == {"time_s", "peak_rss_bytes", "max_memory_bytes"}
    phases = run["time_s"]
    assert phases["census"] + phases["sample_and_count"] + phases["merges"] == pytest.approx(phases["total"], abs=0.02)
    sample = report["sample"]
    langs = sample["by_language"]
    assert len(langs) == 42 and "tgl_Latn" not in langs  # 41 languages + code
    assert langs["hi"]["short"] and langs["hi"]["bytes"] == langs["hi"]["available_bytes"] > 0
    assert langs["ar"]["short"] and langs["ar"]["bytes"] == 0
    assert not langs["en"]["short"] and 0 < langs["en"]["bytes"] < langs["en"]["available_bytes"]
    assert langs["code"]["docs"] > 0 and set(sample["by_category"]) == {"web", "code"}
    assert sample["bytes"] == sum(v["bytes"] for v in langs.values())
    assert abs(sample["bytes"] - 150_000) < 15_000  # the plan fills the byte budget
    assert report["input"]["skipped_other_languages"]["docs"] == 30
    # every document with text once: sampled, not sampled, or in no language of the table
    assert report["input"]["docs"] == len(_records()) == (sample["docs"] + sample["docs_not_sampled"] + 30)
    assert sample["docs_not_sampled"] > 0 and report["input"]["bad_records"] == 0
    assert report["peak_rss_bytes"] > 0 and report["input"]["files"] == 1


def test_same_bytes_for_another_file_layout(trained, corpus_dirs, tmp_path):
    out, report = trained
    train_tokenizer(str(corpus_dirs[1]), str(tmp_path), _cfg(), show_progress=False)
    assert (tmp_path / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    other = json.loads((tmp_path / "training_report.json").read_text())
    assert other["sample"]["by_language"] == report["sample"]["by_language"]


def test_seed_changes_the_sample(ray_local, corpus_dirs, tmp_path, trained):
    report = train_tokenizer(str(corpus_dirs[0]), str(tmp_path), _cfg(seed=4), show_progress=False)
    assert report["sample"]["by_language"]["en"] != trained[1]["sample"]["by_language"]["en"]


def test_warns_about_short_languages(ray_local, corpus_dirs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tokenizer_training.job"):
        train_tokenizer(str(corpus_dirs[0]), str(tmp_path), _cfg(), show_progress=False)
    assert any("less text than their sampling share" in r.getMessage() and "\n  hi: " in r.getMessage()
               for r in caplog.records)


def test_too_little_text_says_how_much_more(ray_local, corpus_dirs, tmp_path):
    with pytest.raises(ConfigError, match=r"yields only [\d,]+ of 50,000 tokens .* the sample is [\d,]+ bytes: "
                                          r"provide roughly [\d,]+ more bytes \(--sample-bytes\)"):
        train_tokenizer(str(corpus_dirs[0]), str(tmp_path), _cfg(vocab_size=50_000), show_progress=False)
    with pytest.raises(ConfigError, match=r"the whole input .* provide roughly [\d,]+ more bytes of input text"):
        train_tokenizer(str(corpus_dirs[0]), str(tmp_path), _cfg(vocab_size=50_000, sample_bytes=10**9),
                        show_progress=False)
    assert not (tmp_path / "tokenizer.json").exists()


def test_memory_guard_caps_the_sample(ray_local, corpus_dirs, tmp_path):
    """The cap follows from the settings alone (the driver's live RSS moves by tens of MB between
    identical runs, and with it the sample and the tokenizer, when it counted)."""
    from tokenizer_training.memory import DRIVER_ALLOWANCE_BYTES, RSS_PER_SAMPLE_BYTE

    budget = int(DRIVER_ALLOWANCE_BYTES + RSS_PER_SAMPLE_BYTE * 60_000)
    report = train_tokenizer(str(corpus_dirs[0]), str(tmp_path), _cfg(max_memory=budget), show_progress=False)
    assert report["sample"]["memory_capped"] and report["sample"]["capped_bytes"] == 60_000
    assert report["sample"]["bytes"] < 70_000
    with pytest.raises(ConfigError, match="max_memory"):
        train_tokenizer(str(corpus_dirs[0]), str(tmp_path), _cfg(max_memory=1000), show_progress=False)


def test_ray_is_released_once_the_sample_is_exhausted(ray_local, corpus_dirs, tmp_path, monkeypatch):
    """The merges need no cluster: the job hands Ray back right after the last sampled block."""
    from pipeline.ray_session import RaySession
    from tokenizer_training import job

    events: list[str] = []
    monkeypatch.setattr(RaySession, "release", lambda self: events.append("release"))
    real_train = job.train_bpe

    def watched(texts, *args, **kwargs):
        def blocks():
            for block in texts:
                events.append("block")
                yield block
            events.append("end")
        return real_train(blocks(), *args, **kwargs)

    monkeypatch.setattr(job, "train_bpe", watched)
    train_tokenizer(str(corpus_dirs[1]), str(tmp_path), _cfg(), show_progress=False)
    assert events.count("release") == 1 and events[-2:] == ["release", "end"]
    assert set(events[:-2]) == {"block"}


def test_from_config(ray_local, corpus_dirs, tmp_path):
    cfg = Config(tokenizer=_cfg(vocab_size=400))
    assert train_tokenizer_from_config(cfg, str(corpus_dirs[0]), str(tmp_path))["vocab_size"] == 400


def _parse(argv):
    parser = argparse.ArgumentParser(prog="xdp")
    cli.register(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_cli_train_and_eval(ray_local, corpus_dirs, tmp_path, capsys):
    out = tmp_path / "tok"
    args = _parse(["train-tokenizer", "--input", str(corpus_dirs[1] / "*.jsonl"), "--output", str(out),
                   "--vocab-size", "500", "--sample-bytes", "0.1M", "--seed", "3"])
    assert args.sample_bytes == 100_000
    assert args.func(args) == 0
    assert "500 tokens" in capsys.readouterr().out

    heldout = tmp_path / "heldout.jsonl"
    _write(heldout, [{"text": "mixed 中文 text 🎉 \x07", "lang": "en"}, {"text": "Cafe\u0301", "lang": "fr"},
                     {"text": "def g():\n\treturn 1", "category": "code"}, {"lang": "en"}])
    args = _parse(["tokenizer-eval", str(out), "--input", str(heldout), "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["roundtrip_failures"] == 0 and report["nfc_only"] == 1
    assert report["docs"] == 3 and report["skipped_records"] == 1  # the row without text is counted
    assert set(report["languages"]) == {"en", "fr", "code"}
    assert report["languages"]["en"]["bytes_per_token"] > 1.0
    assert {"LATIN", "CJK"} <= set(report["vocab_share_by_script"])
    assert sum(report["vocab_share_by_script"].values()) == pytest.approx(1.0, abs=1e-3)


def test_cli_rejects_bad_values(tmp_path):
    with pytest.raises(SystemExit):
        _parse(["train-tokenizer", "--input", "x", "--output", "y", "--max-memory", "lots"])
    args = _parse(["train-tokenizer", "--input", str(tmp_path), "--output", "y", "--temperature", "0"])
    with pytest.raises(ConfigError, match="--temperature: 0.0 is out of range"):
        args.func(args)
    (tmp_path / "file").write_text("")  # refused before Ray starts or the input is read
    args = _parse(["train-tokenizer", "--input", str(tmp_path), "--output", str(tmp_path / "file")])
    with pytest.raises(ConfigError, match="--output .*file exists and is not a directory"):
        args.func(args)
    args = _parse(["tokenizer-eval", str(tmp_path), "--input", str(tmp_path)])
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        args.func(args)
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "empty.jsonl").write_text("")
    args = _parse(["tokenizer-eval", str(tmp_path), "--input", str(tmp_path / "empty.jsonl")])
    with pytest.raises(ConfigError, match="empty.jsonl: no texts to evaluate"):
        args.func(args)


def test_sample_streams_in_file_order_and_frees_the_cluster_when_stopped(ray_local, tmp_path):
    """Blocks arrive file by file in input order; a trainer that stops early leaves no task holding a CPU."""
    files = []
    for k in range(3):  # each file yields many read batches, so its task must wait on backpressure
        path = tmp_path / f"part-{k}.jsonl"
        _write(path, [{"id": f"{k}-{i}", "text": f"file {k} line {i} " * 20, "lang": "en", "category": "web"}
                      for i in range(20_000)])
        files.append(str(path))
    plan = plan_sample({"en": 1.0}, {"en": 1}, sample_bytes=10**9, seed=1)  # rate 1: every document
    expected = [t for f in files for table in read_file(f) for t in table.column("text").to_pylist()]
    streamed = [t for texts in stream_sample(files, plan, frozenset({"en"}), Tally(), Tally()) for t in texts]
    assert streamed == expected

    cpus = ray_local.cluster_resources()["CPU"]
    stream = stream_sample(files, plan, frozenset({"en"}), Tally(), Tally())
    next(stream)
    stream.close()
    deadline = time.monotonic() + 30
    while ray_local.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0) == cpus


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_heap_hands_freed_memory_back():
    """Memory freed in the middle of the heap stays in RSS until release_heap (the driver after training)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(50_000)]  # ~200 MB in small chunks of the main heap
    for block in blocks:
        ctypes.memset(block, 1, 4096)
    for i, block in enumerate(blocks):
        if i % 100 and i != len(blocks) - 1:  # keep every 100th and the last: the heap cannot shrink
            libc.free(block)
    held = current_rss()
    release_heap()
    assert held - current_rss() > 100 * 2**20
    for block in blocks[::100] + [blocks[-1]]:
        libc.free(block)


_ARENA_PROBE = """
import ctypes, re, sys, tempfile, threading
from tokenizer_training.memory import raise_malloc_arena_limit

if sys.argv[1] == "raised":
    raise_malloc_arena_limit()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
threads, barrier = 40, threading.Barrier(41)

def allocate():  # a thread's first malloc attaches it to an arena; all 40 are alive together
    block = libc.malloc(4096)
    barrier.wait()
    barrier.wait()
    libc.free(block)

pool = [threading.Thread(target=allocate) for _ in range(threads)]
for t in pool:
    t.start()
barrier.wait()
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fclose(ctypes.c_void_p(fp))
barrier.wait()
for t in pool:
    t.join()
print(len(re.findall("<heap nr=", open(path).read())))
"""


# glibc's default arena cap is 8 per core: cores online (2.36 here) or, in other versions, usable
_DEFAULT_CAPS = ({8 * len(os.sched_getaffinity(0)), 8 * (os.cpu_count() or 1)}
                 if sys.platform.startswith("linux") else {0})


@pytest.mark.skipif(not sys.platform.startswith("linux") or max(_DEFAULT_CAPS) > 32,
                    reason="glibc's arenas; on a bigger machine the default cap exceeds the probe's threads")
@pytest.mark.parametrize("mode", ["default", "raised"])
def test_every_thread_gets_its_own_malloc_arena_once_raised(mode):
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _ARENA_PROBE, mode], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    arenas = int(out.stdout.strip())
    if mode == "raised":
        assert arenas >= 41  # the main heap and one per thread
    else:
        assert arenas in _DEFAULT_CAPS  # the cap: threads share
