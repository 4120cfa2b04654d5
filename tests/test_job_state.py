"""Fingerprints, completion markers and scratch reuse (`pipeline.job_state`), without Ray."""
from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.config import ConfigError, config_from_dict
from pipeline.job_state import JobState, WorkDir, job_config


@pytest.fixture
def inputs(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": f"hello from {name}"}) + "\n")
    return tmp_path


def _cfg(inputs, out, **sections):
    data = {"inputs": [{"path": str(inputs / "a.jsonl"), "category": "web"},
                       {"path": str(inputs / "b.jsonl"), "category": "books"}],
            "output": str(out), **sections}
    return config_from_dict(data)


def _write_results(out) -> None:
    """What the steps leave: a manifest naming the tokenizer that made it."""
    for name in ("cleaned", "quarantine", "duplicates", "tokenizer", "shards", "report"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for name in ("stats.json", "tokenizer/tokenizer.json", "tokenizer/training_report.json"):
        (out / name).write_text("{}")
    manifest = {"tokenizer_sha256": hashlib.sha256(b"{}").hexdigest()}
    (out / "shards" / "manifest.json").write_text(json.dumps(manifest))


def _finish_all(state: JobState) -> None:
    for step in state.steps:
        state.start(step)
        state.finish(step, {"step": step})


def test_neutral_fields_and_input_order_do_not_change_fingerprints(inputs, tmp_path):
    base = JobState(_cfg(inputs, tmp_path / "o1"))
    other = _cfg(inputs, tmp_path / "o2", ray={"num_cpus": 4, "address": "ray://x:1"},
                 read={"batch_size": 7}, langid={"batch_size": 9}, write={"keep_work_dir": True},
                 dedup={"num_partitions": 7, "partition_chars": 10**6, "partition_docs": 99, "max_iterations": 9})
    other.inputs.reverse()
    assert JobState(other).records == base.records
    assert job_config(other) == job_config(_cfg(inputs, tmp_path / "o3"))


def test_each_step_chains_on_the_one_before(inputs, tmp_path):
    base = JobState(_cfg(inputs, tmp_path))
    mix_only = JobState(_cfg(inputs, tmp_path, mixing={"seed": 7}))
    assert mix_only.fingerprint("clean") == base.fingerprint("clean")
    assert mix_only.fingerprint("tokenizer") == base.fingerprint("tokenizer")
    assert mix_only.fingerprint("mix") != base.fingerprint("mix")
    dedup = JobState(_cfg(inputs, tmp_path, dedup={"threshold": 0.7}))
    assert all(dedup.fingerprint(s) != base.fingerprint(s) for s in ("clean", "tokenizer", "mix"))


def test_completed_steps_are_found_and_changed_config_is_refused(inputs, tmp_path):
    out = tmp_path / "out"
    state = JobState(_cfg(inputs, out))
    assert state.done("clean") is None
    _write_results(out)
    _finish_all(state)
    again = JobState(_cfg(inputs, out))
    again.check()
    assert again.done("mix")["summary"] == {"step": "mix"}
    (out / "shards" / "manifest.json").unlink()  # an output removed by hand: the step runs again
    assert again.done("mix") is None and again.done("tokenizer") is not None

    changed = JobState(_cfg(inputs, out, dedup={"threshold": 0.7}))
    with pytest.raises(ConfigError, match=r"step `clean` completed .*dedup\.threshold: 0\.8 -> 0\.7.*--overwrite"):
        changed.check()
    changed.check(overwrite=True)  # told to: no refusal, and start() clears the stale markers
    changed.start("clean")
    job = out / "_job"
    assert not any((job / f"{step}.done.json").exists() for step in ("clean", "tokenizer", "mix"))
    assert json.loads((job / "clean.started.json").read_text())["fingerprint"] == changed.fingerprint("clean")


def test_changed_input_file_is_named_in_the_refusal(inputs, tmp_path):
    out = tmp_path / "out"
    state = JobState(_cfg(inputs, out), steps=("clean",))
    state.start("clean")  # a run that was interrupted
    (inputs / "b.jsonl").write_text(json.dumps({"text": "new content, another size"}) + "\n")
    with pytest.raises(ConfigError, match=r"`clean` was interrupted .*input files changed \(1\): .*b\.jsonl"):
        JobState(_cfg(inputs, out), steps=("clean",)).check()


def test_workdir_keeps_only_completed_results_of_the_same_fingerprint(tmp_path):
    root = tmp_path / "work"
    scratch = WorkDir(root, "fp1")
    scratch.fresh("read").mkdir()
    (root / "read" / "part.parquet").write_text("x")
    scratch.complete("read")
    (root / "labelled").mkdir()  # killed half-way: never completed
    (root / "labelled" / "partial.parquet").write_text("x")
    (root / ".stats.json.tmp").write_text("x")

    resumed = WorkDir(root, "fp1")
    assert resumed.completed("read") and (root / "read" / "part.parquet").exists()
    assert not (root / "labelled").exists() and not (root / ".stats.json.tmp").exists()
    assert not WorkDir(root, "fp2").completed("read") and not (root / "read").exists()
    scratch = WorkDir(root, None)  # no fingerprint: never reused
    assert sorted(p.name for p in root.iterdir()) == []


def test_an_output_path_that_is_a_file_is_refused_before_any_work(inputs, tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(ConfigError, match="output .*out exists and is not a directory"):
        JobState(_cfg(inputs, tmp_path / "out"))


def test_demo_refuses_another_jobs_output_unless_told(inputs, tmp_path):
    from pipeline.commands import claim_demo_output

    out = tmp_path / "real-job"
    _finish_all(JobState(_cfg(inputs, out)))
    with pytest.raises(ConfigError, match="another job, not of `xdp demo`"):
        claim_demo_output(out, overwrite=False)
    assert not (out / "_job" / "demo").exists()
    claim_demo_output(out, overwrite=True)  # told: the directory is the demo's from now on
    claim_demo_output(out, overwrite=False)


def test_demo_takes_a_new_directory_or_its_own(tmp_path):
    from pipeline.commands import claim_demo_output, demo_config_path
    from pipeline.config import load_config

    claim_demo_output(tmp_path / "new", overwrite=False)
    assert (tmp_path / "new" / "_job" / "demo").exists()
    # A demo output written before the tag existed is recognized by the corpus its clean step read.
    cfg = load_config(demo_config_path())
    cfg.output = str(tmp_path / "old-demo")
    JobState(cfg).start("clean")
    claim_demo_output(tmp_path / "old-demo", overwrite=False)


def test_a_changed_input_field_is_named_in_the_refusal(inputs, tmp_path):
    out = tmp_path / "out"
    JobState(_cfg(inputs, out)).start("clean")
    changed = _cfg(inputs, out)
    changed.inputs[1].text_field = "content"  # b.jsonl (books): first in the canonical order
    with pytest.raises(ConfigError, match=r"Changed: inputs\[0\].text_field: \"text\" -> \"content\"\."):
        JobState(changed).check()
    fewer = _cfg(inputs, out)
    del fewer.inputs[0]  # a.jsonl dropped: named by its path, not as two lists of JSON cut at 80 characters
    with pytest.raises(ConfigError, match=r"Changed: inputs: 2 -> 1 entries; removed \S+/a\.jsonl;"):
        JobState(fewer).check()


def test_a_result_another_command_replaced_is_redone(inputs, tmp_path):
    """`xdp mix --out` or `xdp train-tokenizer --output` into a job's directory replace a completed
    step's result: the next `xdp run` redoes that step instead of reporting the old numbers."""
    out = tmp_path / "out"
    state = JobState(_cfg(inputs, out))
    _write_results(out)
    _finish_all(state)
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    (out / "shards" / "manifest.json").write_text(json.dumps({**manifest, "seed": 7}))
    again = JobState(_cfg(inputs, out))
    assert again.done("mix") is None and again.done("tokenizer") is not None and again.done("clean") is not None
    _finish_all(again)  # mix redone; then a tokenizer replaced under it: both are redone
    (out / "tokenizer" / "tokenizer.json").write_text('{"vocab": 2000}')
    assert again.done("tokenizer") is None and again.done("mix") is None


def test_switching_a_step_off_is_not_a_config_change(inputs, tmp_path):
    base = JobState(_cfg(inputs, tmp_path))
    off = JobState(_cfg(inputs, tmp_path, tokenizer={"enabled": False}, mixing={"enabled": False}))
    assert off.records == base.records


def test_a_step_run_alone_needs_its_inputs_before_ray_starts(inputs, tmp_path):
    from pipeline.commands import run_job

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"step `mix` reads the clean step's output"):
        run_job(_cfg(inputs, out), ("mix",))
    (out / "cleaned" / "category=web").mkdir(parents=True)
    (out / "cleaned" / "category=web" / "part-0.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"tokenizer.enabled: false only reuses one"):
        run_job(_cfg(inputs, out, tokenizer={"enabled": False}))
