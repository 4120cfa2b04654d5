"""Shard contract: uint32 layout, manifest checksums, atomic writes, and the torch readers."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mixing.reader import IterablePackedShards, PackedShards, ShardError
from mixing.shards import read_manifest, sha256_file, write_shards

L = 32


def _sequences(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """n rows; row i holds 1-3 documents whose first token is the row index (to identify rows)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lengths = rng.integers(1, L // 3, size=rng.integers(1, 4))
        rows.append([np.concatenate([[i], rng.integers(3, 200_000, size=k - 1)]) for k in lengths])
    return rows


@pytest.fixture()
def shard_dir(tmp_path):
    rows = _sequences(37)
    manifest = write_shards(rows, tmp_path / "shards", sequence_length=L, sequences_per_shard=10, seed=7)
    return tmp_path / "shards", rows, manifest


def test_layout_and_manifest(shard_dir):
    path, rows, manifest = shard_dir
    assert [s["file"] for s in manifest["shards"]] == [f"shard-{i:05d}.parquet" for i in range(4)]
    assert [s["sequences"] for s in manifest["shards"]] == [10, 10, 10, 7]
    assert manifest["tokens"] == sum(len(d) for r in rows for d in r)
    assert manifest["sequence_length"] == L and manifest["pad_id"] == 0 and manifest["seed"] == 7
    assert read_manifest(path) == manifest
    for entry in manifest["shards"]:
        assert sha256_file(path / entry["file"]) == entry["sha256"]
    table = pq.read_table(path / "shard-00000.parquet")
    assert table.schema.field("input_ids").type == pa.list_(pa.uint32(), L)
    assert table.schema.field("cu_seqlens").type == pa.list_(pa.int32())
    first = rows[0]
    cu = table.column("cu_seqlens")[0].as_py()
    assert cu == np.concatenate([[0], np.cumsum([len(d) for d in first])]).tolist()
    ids = table.column("input_ids")[0].as_py()
    assert ids[: cu[-1]] == np.concatenate(first).tolist() and set(ids[cu[-1]:]) <= {0}
    assert not list(path.glob(".*tmp*"))


def test_ids_beyond_uint16_roundtrip_and_bad_ids_refused(tmp_path):
    write_shards([[[100_533, 70_000, 2]]], tmp_path / "a", sequence_length=4, vocab_size=100_534)
    assert PackedShards(tmp_path / "a")[0]["input_ids"].tolist() == [100_533, 70_000, 2, 0]
    with pytest.raises(ValueError, match="out of range"):
        write_shards([[2**32]], tmp_path / "b", sequence_length=4)
    with pytest.raises(ValueError, match="out of range"):
        write_shards([[-1, 5]], tmp_path / "c", sequence_length=4)
    with pytest.raises(ValueError, match="vocab_size"):
        write_shards([[100_534]], tmp_path / "d", sequence_length=4, vocab_size=100_534)
    with pytest.raises(ValueError, match="exceeds sequence_length"):
        write_shards([[1, 2, 3, 4, 5]], tmp_path / "e", sequence_length=4)
    with pytest.raises(ValueError, match="sequence_length must be >= 2, got 1"):  # what the reader refuses
        write_shards([[1]], tmp_path / "f", sequence_length=1)


def test_other_readers(shard_dir):
    import duckdb
    from datasets import Dataset as HFDataset

    path, rows, manifest = shard_dir
    files = sorted(str(p) for p in path.glob("shard-*.parquet"))
    (total,) = duckdb.sql(f"SELECT sum(n_tokens), count(*) FROM read_parquet({files!r})").fetchall()
    assert total == (manifest["tokens"], 37)
    hf = HFDataset.from_parquet(files)
    assert len(hf) == 37 and len(hf[5]["input_ids"]) == L and hf[5]["input_ids"][0] == 5


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_rank_partitions_cover_every_sequence_once(shard_dir, world_size):
    path, rows, _ = shard_dir
    seen = []
    for rank in range(world_size):
        ds = PackedShards(path, rank=rank, world_size=world_size)
        seen += [int(ds[i]["input_ids"][0]) for i in range(len(ds))]
    assert sorted(seen) == list(range(37))
    iterated = []
    for rank in range(world_size):
        iterated += [int(x["input_ids"][0]) for x in IterablePackedShards(path, rank, world_size, seed=3)]
    assert sorted(iterated) == list(range(37))


def test_item_shapes_and_boundaries(shard_dir):
    path, rows, _ = shard_dir
    ds = PackedShards(path)
    item = ds[12]
    assert item["input_ids"].dtype == torch.int64 and item["input_ids"].shape == (L,)
    assert item["cu_seqlens"].dtype == torch.int32
    expected = np.concatenate([[0], np.cumsum([len(d) for d in rows[12]])])
    assert item["cu_seqlens"].tolist() == expected.tolist()
    assert ds[-1]["input_ids"][0] == 36
    with pytest.raises(IndexError):
        ds[37]


def test_iterable_shuffle_is_deterministic_and_splits_workers(shard_dir):
    path, _, _ = shard_dir

    def order(seed, epoch=0):
        ds = IterablePackedShards(path, seed=seed, block=4)
        ds.set_epoch(epoch)
        return [int(x["input_ids"][0]) for x in ds]

    assert order(None) == list(range(37))
    assert order(1) == order(1) and order(1) != list(range(37)) and sorted(order(1)) == list(range(37))
    assert order(1, epoch=1) != order(1, epoch=0)
    loader = torch.utils.data.DataLoader(IterablePackedShards(path, seed=1), batch_size=None, num_workers=2)
    assert sorted(int(x["input_ids"][0]) for x in loader) == list(range(37))


def test_set_epoch_reaches_persistent_dataloader_workers(shard_dir):
    """Persistent workers keep the dataset copy they started with; the epoch must still reach them."""
    path, _, _ = shard_dir
    ds = IterablePackedShards(path, seed=1, block=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        epochs.append([int(x["input_ids"][0]) for x in loader])
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1]) == list(range(37))
    assert ds.epoch == 1


def test_corrupt_and_truncated_shards_are_named(shard_dir):
    path, _, _ = shard_dir
    victim = path / "shard-00002.parquet"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    ds = PackedShards(path)
    ds[0]  # other shards still read
    with pytest.raises(ShardError, match="shard-00002.parquet"):
        ds[25]
    with pytest.raises(ShardError, match="shard-00002.parquet"):
        PackedShards(path).verify_all()
    victim.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ShardError, match="shard-00002.parquet"):
        list(IterablePackedShards(path))
    victim.unlink()
    with pytest.raises(ShardError, match="shard-00002.parquet.*missing"):
        PackedShards(path)


@pytest.mark.parametrize("bounds", [[0, 5, 5], [1, 5], [0], [0, 9, 4], [0, L + 1]])
def test_a_row_whose_document_bounds_are_impossible_is_named(shard_dir, bounds):
    """The layout decides what attends to what: bounds that do not rise from 0 to at most the row's
    length are refused by the reader, naming the shard and row, not by the model mid-training."""
    path, _, _ = shard_dir
    victim = path / "shard-00001.parquet"
    table = pq.read_table(victim)
    cu = table.column("cu_seqlens").to_pylist()
    cu[3] = bounds
    table = table.set_column(table.schema.get_field_index("cu_seqlens"), "cu_seqlens",
                             pa.array(cu, type=table.schema.field("cu_seqlens").type))
    pq.write_table(table, victim)
    ds = PackedShards(path, verify=False)
    ds[0]  # other shards still read
    with pytest.raises(ShardError, match=r"shard-00001.parquet: row 3 of row group 0: cu_seqlens"):
        ds[13]


def test_killed_writer_leaves_no_partial_shard(tmp_path):
    out = tmp_path / "shards"
    script = textwrap.dedent(f"""
        import itertools, numpy as np
        from mixing.shards import write_shards
        rows = ([np.arange(1, 4097) % 50000] for _ in itertools.count())
        write_shards(rows, {str(out)!r}, sequence_length=4096, sequences_per_shard=512)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while len(list(out.glob("shard-*.parquet"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finals = sorted(out.glob("shard-*.parquet"))
    assert len(finals) >= 2
    assert not (out / "manifest.json").exists()
    for f in finals:
        assert pq.ParquetFile(f).metadata.num_rows == 512
    with pytest.raises(ShardError, match="no manifest"):
        PackedShards(out)
    (out / ".shard-00099.parquet.dead.tmp").write_bytes(b"x")  # what a kill mid-write leaves, for certain
    write_shards(_sequences(3), out, sequence_length=L)  # a rerun clears what the killed run left
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.parquet"]


def test_rewrite_removes_stale_shards(tmp_path):
    write_shards(_sequences(30), tmp_path, sequence_length=L, sequences_per_shard=10)
    manifest = write_shards(_sequences(5), tmp_path, sequence_length=L, sequences_per_shard=10)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-00000.parquet"]
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_xdp_stats_refuses_a_damaged_shard_and_names_it(shard_dir, damage, capsys):
    from pipeline.cli import main

    path, _, _ = shard_dir
    victim = path / "shard-00001.parquet"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x01  # one bit of one byte
    else:
        del data[len(data) - 100:]
    victim.write_bytes(bytes(data))
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert "shard-00001.parquet" in err and "does not match the manifest" in err


@pytest.mark.parametrize("manifest, message", [("{bad", "cannot read the manifest"), ("[]", "expected a JSON object"),
                                               (None, "shards but no manifest.json")])
def test_xdp_stats_on_a_broken_or_missing_manifest_is_one_line(shard_dir, tmp_path, capsys, manifest, message):
    import shutil

    from pipeline.cli import main

    path = tmp_path / "copy"
    shutil.copytree(shard_dir[0], path)
    if manifest is None:
        (path / "manifest.json").unlink()  # not a cleaned directory either: say what is missing
    else:
        (path / "manifest.json").write_text(manifest)
    assert main(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_xdp_stats_on_a_mix_output_whose_manifest_is_missing(shard_dir, tmp_path, capsys):
    # `xdp stats OUT` on a killed mix: OUT/shards holds shards without a manifest. It used to be taken
    # for a cleaned directory and fail on the report's PNG files.
    import shutil

    from pipeline.cli import main

    shutil.copytree(shard_dir[0], tmp_path / "out" / "shards")
    (tmp_path / "out" / "shards" / "manifest.json").unlink()
    (tmp_path / "out" / "report").mkdir()
    (tmp_path / "out" / "report" / "categories.png").write_bytes(b"\x89PNG")
    assert main(["stats", str(tmp_path / "out")]) == 2
    assert "shards but no manifest.json" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "out" / "shards")  # killed before its first shard: the job's marker tells
    (tmp_path / "out" / "_job").mkdir()
    (tmp_path / "out" / "_job" / "mix.started.json").write_text("{}")
    assert main(["stats", str(tmp_path / "out")]) == 2
    assert "a mix started there but wrote no shards yet" in capsys.readouterr().err
