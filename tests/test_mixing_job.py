"""End to end on Ray: cleaned Parquet + a tiny tokenizer -> shards, manifest, report, stats CLI."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.dataset as pds
import pytest
import yaml

from mixing.job import mix_from_config
from mixing.reader import PackedShards
from mixing.tokenize import Tokenize
from pipeline.cli import main
from pipeline.config import ConfigError, config_from_dict

SEQ = 256
RATIOS = {
    "categories": {"web": 60, "books": 25, "code": 15},
    "languages": {"en": 50, "de": 30, "fr": 20},
    "code_languages": {"Python": 70, "Go": 30},
}
WORDS = {"en": "the of and to in is was for on that with as by at from".split(),
         "de": "der die und in den von zu das mit sich des auf für ist im".split(),
         "fr": "de la le et les des en un du une que est pour qui dans".split(),
         "xx": "lorem ipsum dolor sit amet consectetur adipiscing elit sed do".split(),
         "Python": "def return import self None True class lambda yield pass".split(),
         "Go": "func package import return struct interface chan go defer var".split()}
# (category, lang, code_lang, documents): xx is outside the languages table, so it must be excluded
LAYOUT = [("web", "en", None, 120), ("web", "de", None, 60), ("web", "fr", None, 50), ("web", "xx", None, 30),
          ("books", "en", None, 30), ("books", "de", None, 15), ("books", "fr", None, 10),
          ("code", None, "Python", 40), ("code", None, "Go", 25)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    rng = np.random.default_rng(0)
    rows = []
    for cat, lang, code_lang, n in LAYOUT:
        words = WORDS[code_lang or lang]
        for i in range(n):
            length = int(rng.integers(5, 300 if i % 17 else 900))  # a few longer than a sequence
            rows.append({"id": f"{cat}-{lang or code_lang}-{i}", "text": " ".join(rng.choice(words, length)),
                         "category": cat, "lang": lang, "lang_score": None if lang is None else 0.9,
                         "code_lang": code_lang, "source": "test"})
    for i, text in enumerate(["", " \n ", None]):  # no text: left out of the mix, counted as no_text
        rows.append({"id": f"blank-{i}", "text": text, "category": "web", "lang": "en", "lang_score": 0.9,
                     "code_lang": None, "source": "test"})
    pds.write_dataset(pa.Table.from_pylist(rows), root / "cleaned", format="parquet",
                      partitioning=["category", "lang"], partitioning_flavor="hive")
    (root / "stats.json").write_text(json.dumps({"stages": {"exact_dedup": {
        "in": {"docs": 500, "chars": 9000}, "kept": {"docs": 480, "chars": 8800},
        "dropped": {"duplicate": {"docs": 20, "chars": 200}}},
        "read": {"quarantined": {"invalid_json": {"docs": 2, "chars": 50}}}}}))
    _tokenizer(root / "tokenizer", [r["text"] for r in rows if r["text"]])
    (root / "ratios.yaml").write_text(yaml.safe_dump(RATIOS))
    return root


def _tokenizer(path, texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "pad_token": "<pad>"}))


def _config(root, out, **mixing):
    return config_from_dict({
        "inputs": [{"path": str(root / "cleaned"), "category": "web"}], "output": str(out),
        "mixing": {"ratios": str(root / "ratios.yaml"), "sequence_length": SEQ, "sequences_per_shard": 16,
                   "pack_window_sequences": 8, **mixing},
    })


def test_tokenize_appends_eos_and_buckets(workdir):
    batch = pds.dataset(workdir / "cleaned", format="parquet", partitioning="hive").to_table()
    out = Tokenize(str(workdir / "tokenizer"), seed=1)(batch)
    assert out.num_rows == batch.num_rows - 3  # the rows with text "", " \n " or null are left out
    tokens = out.column("tokens").to_pylist()
    assert all(t[-1] == 2 and 2 not in t[:-1] for t in tokens)
    assert out.column("n_tokens").to_pylist() == [len(t) for t in tokens]
    assert set(zip(out.column("category").to_pylist(), out.column("key").to_pylist())) == {
        (c, l or k) for c, l, k, _ in LAYOUT}  # code buckets are keyed by code language


def test_special_tokens_quoted_in_a_document_are_text_not_boundaries(workdir):
    """A document quoting `<|endoftext|>` or `<pad>` must not get an EOS inside it (a false document
    boundary in the packed rows) nor lose the quote when decoded."""
    text = "a tutorial on tokens: write <|endoftext|> between documents and pad with <pad>."
    batch = pa.table({"id": ["q"], "text": [text], "category": ["web"], "lang": ["en"]})
    tok = Tokenize(str(workdir / "tokenizer"), seed=1)
    (tokens,) = tok(batch).column("tokens").to_pylist()
    assert tokens[-1] == 2 and not {0, 1, 2} & set(tokens[:-1])
    assert tok.tokenizer.decode(tokens[:-1]) == text


def test_tokenize_batch_keeps_the_tokenizer_to_one_thread(workdir, monkeypatch):
    from mixing.tokenize import TokenizerInfo, _tokenizer, tokenize_batch

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # restored after the test
    _tokenizer.cache_clear()
    batch = pds.dataset(workdir / "cleaned", format="parquet", partitioning="hive").to_table().slice(0, 5)
    info = TokenizerInfo.load(workdir / "tokenizer")
    assert tokenize_batch(batch, str(workdir / "tokenizer"), info.sha256, 1).num_rows == 5
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_tokenize_in_slices_gives_the_ids_of_one_call(workdir, monkeypatch):
    import mixing.tokenize as tokenize

    batch = pds.dataset(workdir / "cleaned", format="parquet", partitioning="hive").to_table()
    tok = Tokenize(str(workdir / "tokenizer"), seed=1)
    texts = [t for t in batch.column("text").to_pylist() if t and t.strip()]  # rows without text are left out
    whole = tok.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    monkeypatch.setattr(tokenize, "_ENCODE_CHARS", 100)  # every call a few short documents, or one long one
    calls = []
    encode = tok.tokenizer.encode_batch_fast
    tok.tokenizer = type("Spy", (), {"encode_batch_fast": lambda self, texts, **kw: calls.append(texts) or
                                     encode(texts, **kw)})()
    tokens = tok(batch).column("tokens").to_pylist()
    assert tokens == [e.ids + [2] for e in whole]
    assert len(calls) > 5 and all(len(c) == 1 or sum(map(len, c)) <= 100 for c in calls)
    assert [t for c in calls for t in c] == texts


@pytest.fixture(scope="module")
def mixed(workdir, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    cfg = _config(workdir, out)
    summary = mix_from_config(cfg, str(workdir / "cleaned"), str(workdir / "tokenizer"), str(out))
    return cfg, out, summary


def test_a_mix_with_nothing_in_the_tables_names_what_the_data_has_and_leaves_no_cache(workdir, ray_local, tmp_path):
    (tmp_path / "ratios.yaml").write_text(yaml.safe_dump({**RATIOS, "categories": {"papers": 100}}))
    cfg = _config(workdir, tmp_path / "out", ratios=str(tmp_path / "ratios.yaml"))
    with pytest.raises(ConfigError, match=r"no tokens available .*; the data has only books/de \([0-9,]+ tokens\)"):
        mix_from_config(cfg, str(workdir / "cleaned"), str(workdir / "tokenizer"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "_work" / "mix").exists()


def test_mix_end_to_end(mixed, workdir):
    cfg, out, summary = mixed
    shard_dir = out / "shards"
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    stats = manifest["stats"]
    # all three tables hold (document granularity: within 1.5 pp on this tiny corpus)
    for table in ("categories", "languages", "code_languages"):
        for name, share in RATIOS[table].items():
            target = share / sum(RATIOS[table].values())
            assert stats[table][name]["target"] == pytest.approx(target)
            assert abs(stats[table][name]["realized"] - target) < 0.015, (table, name, stats[table][name])
    assert "web/xx" in stats["excluded"] and "xx" not in stats["languages"]
    assert max(b["epochs"] for b in stats["buckets"].values()) <= 4.0 + 1e-9
    ds = PackedShards(shard_dir)
    assert len(ds) == manifest["sequences"] == summary["sequences"] == stats["packing"]["sequences"]
    real = sum(int(ds[i]["cu_seqlens"][-1]) for i in range(len(ds)))
    assert real == manifest["tokens"] == stats["total_tokens"] == stats["packing"]["tokens"]
    eos = sum(int((ds[i]["input_ids"] == 2).sum()) for i in range(len(ds)))
    assert eos == sum(b["documents"] for b in stats["buckets"].values())
    # every cleaned row once: selected, not selected, excluded or without text
    docs, buckets = stats["documents"], stats["buckets"].values()
    assert docs["read"] == pq.read_table(workdir / "cleaned").num_rows and docs["no_text"] == 3
    assert docs["read"] == docs["selected"] + docs["not_selected"] + docs["excluded"] + docs["no_text"]
    assert docs["excluded"] == stats["excluded"]["web/xx"]["documents"] > 0 and docs["copies"] == eos
    assert docs["selected"] == sum(b["selected_documents"] for b in buckets) > 0 and docs["not_selected"] > 0
    assert all(0 < b["selected_documents"] <= b["available_documents"] for b in buckets)
    assert stats["packing"]["split_documents"] > 0
    assert manifest["eos_id"] == 2 and manifest["pad_id"] == 0 and len(manifest["tokenizer_sha256"]) == 64
    assert stats["stages"]["exact_dedup"]["dropped"]["duplicate"]["docs"] == 20
    report = (out / "report" / "report.html").read_text()
    assert "data:image/png;base64," in report and "duplicate" in report
    assert "<td>read</td><td>quarantined: invalid_json</td><td>2</td><td>50</td>" in report
    assert not (out / "_work" / "mix").exists()  # the token cache is gone once the shards are written


def test_stats_cli_on_shards(mixed, capsys):
    _, out, _ = mixed
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == json.loads((out / "shards" / "manifest.json").read_text())["stats"]
    assert set(stats["categories"]["web"]) == {"target", "realized", "tokens", "planned"}


@pytest.mark.slow
def test_same_config_same_bytes(mixed, workdir):
    cfg, out, _ = mixed
    again = out.parent / (out.name + "-again")
    mix_from_config(cfg, str(workdir / "cleaned"), str(workdir / "tokenizer"), str(again))
    files = sorted(p.name for p in (out / "shards").iterdir())
    assert files == sorted(p.name for p in (again / "shards").iterdir()) and "manifest.json" in files
    for name in files:  # the shards and the manifest (stats, counts, hashes)
        assert (again / "shards" / name).read_bytes() == (out / "shards" / name).read_bytes()


def test_stats_cli_json_shape(workdir, tmp_path, capsys):
    assert main(["stats", str(workdir / "cleaned"), "--json", "--ratios", str(workdir / "ratios.yaml"),
                 "--report", str(tmp_path / "r")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["unit"] == "chars"
    for table in ("categories", "languages", "code_languages"):
        assert set(stats[table][next(iter(stats[table]))]) == {"target", "realized", "tokens"}
        assert sum(v["realized"] for v in stats[table].values()) == pytest.approx(1.0)
    assert "xx" in stats["languages"] and stats["languages"]["xx"]["target"] == 0
    assert (tmp_path / "r" / "languages.png").read_bytes()[:4] == b"\x89PNG"
    assert stats["stages"]["exact_dedup"]["kept"]["docs"] == 480


def test_plan_cli_prints_the_plan_without_writing(workdir, ray_local, tmp_path, capsys):
    cfg = {"inputs": [{"path": str(workdir / "cleaned"), "category": "web"}], "output": str(tmp_path / "out"),
           "mixing": {"ratios": str(workdir / "ratios.yaml")}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    args = ["plan", "--config", str(tmp_path / "cfg.yaml"), "--cleaned", str(workdir / "cleaned"),
            "--tokenizer", str(workdir / "tokenizer")]
    assert main(args + ["--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["budget_rule"] == "largest feasible" and "web/xx" in plan["excluded"]
    assert {"web/en", "books/de", "code/Go"} <= set(plan["buckets"])
    assert all(b["epochs"] <= 4.0 + 1e-9 for b in plan["buckets"].values())
    assert main(args) == 0
    assert "code/Python" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    assert main(["plan", "--config", str(tmp_path / "cfg.yaml"), "--cleaned", str(tmp_path / "nowhere")]) == 2


def test_cleaned_without_required_column_is_a_clear_error(tmp_path):
    from mixing.job import cleaned_counts
    from pipeline.config import ConfigError

    (tmp_path / "cleaned").mkdir()
    pq.write_table(pa.table({"id": ["a"], "category": ["web"]}), tmp_path / "cleaned" / "part-0.parquet")
    with pytest.raises(ConfigError, match="'text'"):
        cleaned_counts(str(tmp_path / "cleaned"))


def test_a_stray_file_in_the_cleaned_directory_is_named(workdir, tmp_path):
    import shutil

    from mixing.job import cleaned_counts
    from pipeline.config import ConfigError

    cleaned = tmp_path / "cleaned"
    shutil.copytree(workdir / "cleaned", cleaned)
    (cleaned / "NOTES.txt").write_text("hand-written notes")
    with pytest.raises(ConfigError, match="NOTES.txt is not a Parquet file"):
        cleaned_counts(str(cleaned))


def test_entries_the_selection_misses_are_reported():
    """A thin language planned below one of its documents gets none: the stats must say so."""
    from mixing.stats import selection_issues, table_stats

    shares = {"en": 0.995, "ar": 0.003, "sw": 0.002}
    tables = {"languages": table_stats(shares, {"en": 997, "sw": 2}, planned=shares),
              "categories": table_stats({"web": 1.0}, {"web": 1000}, planned={"web": 1.0})}
    issues = selection_issues(tables)
    assert [(i["table"], i["name"], i["status"]) for i in issues] == [("languages", "ar", "not realized")]
    assert "planned 0.300 %, selected 0.000 %" in issues[0]["detail"]
    tables["languages"]["en"]["realized"] = 0.985  # 1 pp off: reported too
    assert [i["name"] for i in selection_issues(tables)] == ["en", "ar"]


def test_cleaned_without_language_columns_counts_like_the_mix_reads_it(tmp_path):
    from mixing.job import cleaned_counts

    (tmp_path / "cleaned").mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": ["héllo"], "category": ["web"]}), tmp_path / "cleaned" / "p.parquet")
    counts, unit = cleaned_counts(str(tmp_path / "cleaned"))
    assert unit == "chars" and counts.column("n").to_pylist() == [5] and counts.column("category").to_pylist() == ["web"]


def test_plan_and_mix_check_their_inputs_before_ray_starts(workdir, tmp_path, monkeypatch):
    import mixing.job
    from pipeline.config import ConfigError, config_from_dict

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the inputs were checked")

    monkeypatch.setattr(mixing.job, "ray_session", no_ray)
    cfg = config_from_dict({"inputs": [{"path": str(workdir / "cleaned"), "category": "web"}],
                            "output": str(tmp_path / "out")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no Parquet files"):
        mixing.job.plan_cleaned(str(tmp_path / "empty"), str(workdir / "tokenizer"), cfg)
    with pytest.raises(ConfigError, match="tokenizer"):
        mixing.job.mix_from_config(cfg, str(workdir / "cleaned"), str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="no Parquet files"):
        mixing.job.cleaned_counts(str(tmp_path / "empty"), str(workdir / "tokenizer"))


def test_a_token_cache_from_before_an_upgrade_is_not_reused(tmp_path):
    from mixing.job import _cache_is_current
    from mixing.tokenize import TOKENIZED_SCHEMA

    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = TOKENIZED_SCHEMA.remove(TOKENIZED_SCHEMA.get_field_index("tie"))  # the cache before `tie` existed
    pq.write_table(old.empty_table(), tmp_path / "old" / "part-0.parquet")
    pq.write_table(TOKENIZED_SCHEMA.empty_table(), tmp_path / "new" / "part-0.parquet")
    assert not _cache_is_current(tmp_path / "old") and _cache_is_current(tmp_path / "new")
