"""`xdp smoke-train` end to end on CPU: DDP and FSDP2 over gloo, checkpoint + resume, Ray Train."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mixing.shards import write_shards
from model.train import TrainConfig, loss_fell, loss_verdict, lr_at, train
from pipeline.cli import main as xdp_main

SEQ_LEN, VOCAB = 256, 512
SUMMARY_KEYS = {"first_loss", "last_loss", "steps", "tokens_per_s", "backend", "world_size", "device"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """16 packed rows of learnable documents (arithmetic runs of token ids, each ending in EOS)."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(16):
        docs, left = [], SEQ_LEN - int(rng.integers(0, 20))
        while left > 8:
            n = int(min(left, rng.integers(8, 120)))
            start, step = int(rng.integers(3, VOCAB)), int(rng.integers(1, 4))
            docs.append(np.append((start + step * np.arange(n - 1)) % (VOCAB - 3) + 3, 2))
            left -= n
        rows.append(docs)
    out = tmp_path_factory.mktemp("shards")
    write_shards(rows, out, sequence_length=SEQ_LEN, vocab_size=VOCAB, eos_id=2, pad_id=0, sequences_per_shard=8)
    return out


def smoke_train(*args: str, timeout: int = 300, cwd=None) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "smoke-train", "--lr", "3e-3", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert SUMMARY_KEYS <= summary.keys()
    return summary, proc


@pytest.fixture(scope="module")
def ddp_run(shards):
    return smoke_train("--shards", str(shards), "--steps", "6", "--nproc", "2")[0]


def test_two_process_ddp_loss_falls_and_ranks_agree(ddp_run):
    s = ddp_run
    assert (s["world_size"], s["device"], s["backend"], s["parallelism"]) == (2, "cpu", "sdpa_docs", "ddp")
    assert s["steps"] == 6 and len(s["losses"]) == 6
    assert all(math.isfinite(x) for x in s["losses"]) and s["last_loss"] < s["first_loss"]
    assert s["first_loss"] == pytest.approx(math.log(VOCAB), rel=0.05)
    assert s["replicas_in_sync"] is True
    assert s["tokens_per_s"] > 0


def test_fsdp_matches_ddp_and_resume_matches_uninterrupted(ddp_run, shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    full, _ = smoke_train("--shards", str(shards), "--steps", "6", "--nproc", "2", "--fsdp",
                          "--checkpoint-dir", str(ckpt), "--checkpoint-every", "3")
    assert full["parallelism"] == "fsdp2"
    assert full["losses"] == pytest.approx(ddp_run["losses"], rel=1e-5)  # same math, other sharding
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-3", "step-6"]
    resumed, _ = smoke_train("--shards", str(shards), "--steps", "6", "--nproc", "2", "--fsdp",
                             "--resume", str(ckpt / "step-3"))
    assert resumed["steps"] == 3
    assert resumed["losses"] == pytest.approx(full["losses"][3:], rel=1e-6)


@pytest.fixture(scope="module")
def two_rows_per_step(shards):
    """Reference runs that read two rows per rank per step in one forward pass: one process, and DDP."""
    return {nproc: smoke_train("--shards", str(shards), "--steps", "3", "--nproc", nproc, "--batch-size", "2")[0]
            for nproc in ("1", "2")}


@pytest.mark.parametrize("launch", [["--nproc", "1"], ["--nproc", "2"], ["--nproc", "2", "--fsdp"]],
                         ids=["one-process", "ddp", "fsdp"])
def test_gradient_accumulation_equals_one_larger_batch(shards, two_rows_per_step, launch):
    """Two micro-batches of one row train exactly as one batch of two rows: same rows, same losses, and
    (DDP, FSDP2) gradients reduced across ranks once per step, so replicas stay in sync."""
    accum, _ = smoke_train("--shards", str(shards), "--steps", "3", "--batch-size", "1", "--grad-accum", "2", *launch)
    reference = two_rows_per_step[launch[1]]
    assert accum["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert accum["replicas_in_sync"] is (True if launch == ["--nproc", "2"] else None)


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_gradients_are_reduced_only_on_the_last_micro_batch(wrapper, tmp_path):
    """Equal losses cannot show this (a reduce per micro-batch gives the same sums, at K times the
    traffic), so record the sync flag each backward runs with."""
    import torch
    import torch.distributed as dist

    from model.data import collate
    from model.train import train_step
    from test_model_core import rows_with, tiny_model

    batch = collate(rows_with([[30, 20]], seq_len=64, vocab=512), eos_id=2)
    model, synced = tiny_model(), []
    if wrapper == "fsdp2":  # FSDP2's switch, recorded
        model.set_requires_gradient_sync = synced.append
        wrapped = step_fn = model
    else:  # DDP in a one-process gloo group: its flag, read in each forward
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        wrapped = torch.nn.parallel.DistributedDataParallel(model)

        def step_fn(*args):
            synced.append(wrapped.require_backward_grad_sync)
            return wrapped(*args)
    try:
        train_step(step_fn, wrapped, torch.optim.SGD(model.parameters(), lr=0.0), [batch] * 3, grad_clip=1.0)
    finally:
        # DDP's reducer holds the group. Freed after destroy_process_group, it destroyed the group itself
        # while Python freed this frame, and a CI run hung there (~ProcessGroupGloo joining a gloo thread);
        # so free it first, as `train` does by returning before `train_and_leave` destroys the group.
        wrapped = step_fn = None
        if dist.is_initialized():
            dist.destroy_process_group()
    assert synced == [False, False, True]


@pytest.mark.parametrize("change, named", [(["--seed", "1"], "seed"), (["--grad-accum", "2"], "rows_per_step")])
def test_resume_refuses_another_data_order(shards, tmp_path, capsys, change, named):
    assert xdp_main(["smoke-train", "--shards", str(shards), "--steps", "2", "--checkpoint-dir", str(tmp_path)]) == 0
    code = xdp_main(["smoke-train", "--shards", str(shards), "--steps", "4", *change,
                     "--resume", str(tmp_path / "step-2")])
    assert code == 2 and named in capsys.readouterr().err


def test_one_process_checkpoint_and_resume_without_warnings(shards, tmp_path):
    """One process is the intended case, so DCP's "assuming ... a single process" warning is noise."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(TrainConfig(shards=str(shards), steps=4, checkpoint_dir=str(tmp_path), checkpoint_every=2))
        assert train(TrainConfig(shards=str(shards), steps=4, resume=str(tmp_path / "step-2")))["steps"] == 2


def test_resume_with_another_schedule_is_told_and_a_rerun_replaces_its_checkpoint(shards, tmp_path, caplog):
    import logging

    cfg = TrainConfig(shards=str(shards), steps=2, checkpoint_dir=str(tmp_path))
    train(cfg)
    first = (tmp_path / "step-2" / "train_state.json").read_text()
    train(cfg)  # the same checkpoint again: replaced, nothing left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]
    assert json.loads((tmp_path / "step-2" / "train_state.json").read_text()) == json.loads(first)
    with caplog.at_level(logging.WARNING, logger="model.train"):
        resumed = train(TrainConfig(shards=str(shards), steps=4, lr=2e-3, resume=str(tmp_path / "step-2")))
    assert resumed["steps"] == 2
    assert "steps 2 -> 4" in caplog.text and "lr 0.001 -> 0.002" in caplog.text


@pytest.mark.parametrize("damage, message", [("truncate", "cannot load the checkpoint"),
                                             ("metadata", "no .metadata"),
                                             ("interrupted", "resume from ")])
def test_a_damaged_checkpoint_is_one_line(shards, tmp_path, capsys, damage, message):
    assert xdp_main(["smoke-train", "--shards", str(shards), "--steps", "2", "--checkpoint-dir", str(tmp_path)]) == 0
    ckpt = tmp_path / "step-2"
    if damage == "truncate":
        for part in ckpt.glob("*.distcp"):
            part.write_bytes(part.read_bytes()[:100])
    elif damage == "metadata":
        (ckpt / ".metadata").unlink()
    else:  # a save of the same step stopped after setting the old checkpoint aside
        os.replace(ckpt, tmp_path / "step-2.old")
    assert xdp_main(["smoke-train", "--shards", str(shards), "--steps", "4", "--resume", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_step_larger_than_the_rows_a_process_holds_is_warned(shards, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="model.train"):
        train(TrainConfig(shards=str(shards), steps=2, batch_size=10, grad_accum=2))
    assert "a step reads 20 rows per process" in caplog.text and "holds 16" in caplog.text


def test_rows_longer_than_the_context_are_refused_before_training(tmp_path, capsys):
    rows = [[np.append(np.arange(3, 16_400 + 2), 2)]]  # one document of 16,400 tokens
    write_shards(rows, tmp_path, sequence_length=16_400, vocab_size=VOCAB * 40, eos_id=2, pad_id=0)
    assert xdp_main(["smoke-train", "--shards", str(tmp_path), "--steps", "2"]) == 2
    assert "exceed preset tiny's context of 16384" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--shards", "{missing}"], "no manifest.json"),
    (["--fsdp"], "--fsdp"),
    (["--attention", "xformers"], "--attention"),
    (["--steps", "0"], "steps"),
    (["--steps", "1"], "--steps must be >= 2"),
    (["--grad-accum", "0"], "--grad-accum must be >= 1, got 0"),
    (["--resume", "{missing}"], "no such checkpoint"),
    (["--lr", "nan"], "--lr must be > 0"),
    (["--checkpoint-every", "1"], "--checkpoint-every needs --checkpoint-dir"),
    (["--nproc", "17"], "16 sequences for 17 processes"),  # refused before any worker starts
])
def test_bad_input_is_a_clean_config_error(shards, tmp_path, capsys, args, message):
    args = [a.replace("{missing}", str(tmp_path / "nope")) for a in args]
    if "--shards" not in args:
        args = ["--shards", str(shards), *args]
    assert xdp_main(["smoke-train", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda m: "{broken", "cannot read the manifest"),
    (lambda m: [m], "expected a JSON object"),
    (lambda m: {**m, "shards": [{"file": "shard-00000.parquet"}]}, "shards must be a list"),
    (lambda m: {**m, "eos_id": m["vocab_size"]}, "eos_id must be an integer below vocab_size"),
    (lambda m: {**m, "vocab_size": 10}, "outside the manifest's vocab_size 10"),  # found when rows are read
])
def test_a_damaged_manifest_is_one_line_not_a_traceback(shards, tmp_path, capsys, edit, message):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edited = edit(manifest)
    (copy / "manifest.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    assert xdp_main(["smoke-train", "--shards", str(copy), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_corrupt_shard_found_by_a_rank_is_one_line(shards, tmp_path, capsys):
    """Checksums are checked by each rank as it opens a shard: the launcher turns the rank's ShardError
    into the one line a single process prints, not a traceback per rank."""
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    victim = copy / "shard-00001.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    assert xdp_main(["smoke-train", "--shards", str(copy), "--steps", "2", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "shard-00001.parquet: sha256" in err and "Traceback" not in err


def test_resume_refuses_shards_of_another_tokenizer(shards, tmp_path, capsys):
    import shutil

    assert xdp_main(["smoke-train", "--shards", str(shards), "--steps", "2", "--checkpoint-dir", str(tmp_path)]) == 0
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "tokenizer_sha256": "f" * 64}))
    assert xdp_main(["smoke-train", "--shards", str(other), "--steps", "4", "--resume", str(tmp_path / "step-2")]) == 2
    assert "tokenizer_sha256" in capsys.readouterr().err


def test_schedule_and_verdict():
    cfg = TrainConfig(shards="x", steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, s) for s in range(100)]  # the steps a run takes: 0 .. 99
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert max(lrs) == lrs[10] == pytest.approx(1.0) and lrs.count(lrs[10]) == 1  # the peak, once
    assert lrs[99] == pytest.approx(0.1)  # the last step ends the decay
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(TrainConfig(shards="x", steps=2, lr=1.0, warmup_steps=0), 1) == pytest.approx(0.1)
    assert loss_fell({"losses": [5.0, 4.0], "first_loss": 5.0, "last_loss": 4.0})
    assert not loss_fell({"losses": [5.0, 5.5], "first_loss": 5.0, "last_loss": 5.5})
    assert not loss_fell({"losses": [5.0, float("nan"), 4.0], "first_loss": 5.0, "last_loss": 4.0})
    assert "is nan at step 2" in loss_verdict({"losses": [5.0, float("nan"), 4.0], "first_loss": 5.0, "last_loss": 4.0})
    assert "did not fall (5.0000 -> 5.5000" in loss_verdict({"losses": [5.0, 5.5], "first_loss": 5.0, "last_loss": 5.5})


@pytest.fixture
def ray_cluster():
    """A fresh local Ray with a CPU for Ray Train's controller beside the two workers.

    `address="local"` so that a cluster someone else left running on a shared box is never joined.
    """
    import ray

    from conftest import RAY_TEST_KWARGS

    if ray.is_initialized():
        ray.shutdown()
    ray.init(**{**RAY_TEST_KWARGS, "num_cpus": 3})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.slow
def test_ray_train_two_cpu_workers_match_ddp(ddp_run, shards, tmp_path, ray_cluster):
    """Relative paths, as typed: Ray Train's workers run in a directory of their own."""
    summary, _ = smoke_train("--shards", os.path.relpath(shards, tmp_path), "--steps", "6", "--nproc", "2", "--ray",
                             "--address", ray_cluster, "--checkpoint-dir", "ray", cwd=tmp_path)
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True
    assert json.loads((tmp_path / "ray" / "step-6" / "train_state.json").read_text())["step"] == 6
    assert summary["losses"] == pytest.approx(ddp_run["losses"], rel=1e-5)
