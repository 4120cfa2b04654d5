"""Where commands write, and the Parquet they read, are checked before any work: one line, exit 2."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.preflight import check_output_dir, check_output_file, parquet_metadata

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path):
    """A config, a JSONL file, a regular file, a cleaned directory, one with a truncated Parquet file,
    Parquet without text, and a shard directory's manifest."""
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "x"}\n')
    (tmp_path / "job.yaml").write_text(f"inputs: [{{path: {tmp_path}/in.jsonl, category: web}}]\n"
                                       f"output: {tmp_path}/out\n")
    (tmp_path / "afile").write_text("")
    table = pa.table({"id": ["a"], "text": ["some text"], "category": ["web"]})
    for name in ("cleaned", "bad", "notext", "nullid"):
        (tmp_path / name).mkdir()
    pq.write_table(table, tmp_path / "cleaned" / "part-0.parquet")
    pq.write_table(pa.table({"id": ["a", None], "text": ["x", "y"], "category": ["web"] * 2}),
                   tmp_path / "nullid" / "part-0.parquet")
    pq.write_table(table.drop_columns(["text"]), tmp_path / "notext" / "part-0.parquet")
    data = (tmp_path / "cleaned" / "part-0.parquet").read_bytes()
    (tmp_path / "bad" / "part-0.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    return tmp_path


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("argv, message", [
    (["smoke-train", "--shards", "{tmp}/shards", "--checkpoint-dir", "{tmp}/afile"],
     "--checkpoint-dir {tmp}/afile exists and is not a directory"),
    (["smoke-train", "--shards", "{tmp}/shards", "--checkpoint-dir", "{tmp}/shards"],
     "--checkpoint-dir {tmp}/shards is the --shards directory"),
    (["mix", "--config", "{tmp}/job.yaml", "--cleaned", "{tmp}/cleaned", "--out", "{tmp}/cleaned"],
     "--output {tmp}/cleaned is the --cleaned directory"),
    (["mix", "--config", "{tmp}/job.yaml", "--out", "{tmp}/afile"], "--output {tmp}/afile exists and is not a"),
    (["mix", "--config", "{tmp}/job.yaml", "--out", "{tmp}/afile/sub"], "{tmp}/afile is not a directory"),
    (["clean", "--config", "{tmp}/job.yaml", "--output", "{tmp}/afile/sub"], "{tmp}/afile is not a directory"),
    (["train-tokenizer", "--input", "{tmp}/cleaned", "--output", "{tmp}/cleaned/tok"],
     "--output {tmp}/cleaned/tok is inside the --input directory {tmp}/cleaned"),
    (["stats", "{tmp}/cleaned", "--report", "{tmp}/cleaned/report"], "--report {tmp}/cleaned/report is inside"),
    (["stats", "{tmp}/shards", "--tokenizer", "{tmp}/tok"], "--tokenizer: only for a cleaned directory"),
    (["stats", "{tmp}/afile"], "{tmp}/afile: not a directory"),
    (["dedup", "{tmp}/in.jsonl", "{tmp}/afile"], "OUT_DIR {tmp}/afile exists and is not a directory"),
    (["dedup", "{tmp}/cleaned", "{tmp}/out"], "IN.jsonl {tmp}/cleaned: a directory, not a file"),
    (["langid", "{tmp}/cleaned", "{tmp}/o.jsonl"], "{tmp}/cleaned: a directory, not a JSONL file"),
    (["tune-langid", "{tmp}/in.jsonl", "--output", "{tmp}/cleaned"], "--output {tmp}/cleaned is a directory"),
    (["plan", "--config", "{tmp}/job.yaml", "--cleaned", "{tmp}/bad"],
     "{tmp}/bad/part-0.parquet is not a readable Parquet file"),
    (["stats", "{tmp}/bad"], "{tmp}/bad/part-0.parquet is not a readable Parquet file"),
    (["plan", "--config", "{tmp}/job.yaml", "--cleaned", "{tmp}/nullid"],
     "part-0.parquet holds rows without an id (1;"),
    (["train-tokenizer", "--input", "{tmp}/bad", "--output", "{tmp}/tk"],
     "--input: {tmp}/bad/part-0.parquet is not a readable Parquet file"),
    (["train-tokenizer", "--input", "{tmp}/notext", "--output", "{tmp}/tk"], "has no 'text' column"),
])
def test_a_wrong_output_or_unreadable_input_is_one_line_before_any_work(tree, capsys, argv, message):
    from pipeline.cli import main

    before = _listing(tree)
    assert main([a.replace("{tmp}", str(tree)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tree)) in err and "Traceback" not in err, err
    assert err.count("\n") == 1
    assert _listing(tree) == before  # nothing created, the dedup OUT_DIR included
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_outputs_may_hold_what_is_read_but_not_sit_inside_it(tmp_path):
    (tmp_path / "out" / "cleaned").mkdir(parents=True)
    check_output_dir(tmp_path / "out", "--output", reads=[("--cleaned", str(tmp_path / "out" / "cleaned"))])
    check_output_dir(tmp_path / "new" / "deeper", "--output", reads=[("--input", str(tmp_path / "out"))])
    check_output_dir(tmp_path / "out" / "cleaned2", "--output", reads=[("--input", str(tmp_path / "out" / "cleaned"))])
    with pytest.raises(ConfigError, match="is inside the --input directory"):
        check_output_dir(tmp_path / "out" / "cleaned" / "x", "--output", reads=[("--input", str(tmp_path / "out"))])
    check_output_file(tmp_path / "new.jsonl", "OUT.jsonl")
    assert _listing(tmp_path) == ["out", "out/cleaned"]  # the probes leave nothing behind


def test_a_truncated_parquet_file_is_named(tmp_path):
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "ok.parquet")
    assert parquet_metadata(tmp_path / "ok.parquet", "input").schema.names == ["text"]
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "ok.parquet").read_bytes()[:-9])
    with pytest.raises(ConfigError, match=r"^input: .*cut.parquet is not a readable Parquet file \(Parquet magic"):
        parquet_metadata(tmp_path / "cut.parquet", "input")


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply: root's DAC override dropped."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("argv, flag", [
    (["clean", "--config", "{tmp}/job.yaml", "--output", "{ro}/out"], "output"),
    (["train-tokenizer", "--input", "{tmp}/cleaned", "--output", "{ro}/tok"], "--output"),
    (["smoke-train", "--shards", "{tmp}/shards", "--checkpoint-dir", "{ro}/ck"], "--checkpoint-dir"),
])
def test_an_unwritable_output_is_refused_before_any_work(tree, argv, flag):
    ro = tree / "ro"
    ro.mkdir(mode=0o555)
    argv = [a.replace("{tmp}", str(tree)).replace("{ro}", str(ro)) for a in argv]
    proc = subprocess.run([*_unprivileged(), sys.executable, "-m", "pipeline.cli", *argv],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"xdp: config error: {flag} {argv[-1]}: cannot write in {ro} (Permission denied)" in proc.stderr
    assert "Traceback" not in proc.stderr and list(ro.iterdir()) == []


def test_an_error_raised_in_a_ray_task_is_printed_without_ray_s_wrapper(monkeypatch, capsys):
    from ray.exceptions import RayTaskError

    import pipeline.cli

    try:
        raise ConfigError("/data/x.parquet: Parquet file has no 'text' column")
    except ConfigError as exc:
        wrapped = RayTaskError("census_file", "Traceback (most recent call last): ...", exc).as_instanceof_cause()

    def fail(args):
        raise wrapped

    monkeypatch.setattr(pipeline.cli, "parse_args", lambda argv: Namespace(func=fail, verbose=False))
    assert pipeline.cli.main([]) == 2
    assert capsys.readouterr().err == "xdp: config error: /data/x.parquet: Parquet file has no 'text' column\n"
