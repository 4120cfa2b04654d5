"""`xdp demo` from raw files to shards, report and a two-process smoke-train, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def test_demo_accounts_for_every_record_and_writes_shards_and_report(demo_output):
    stats = json.loads((demo_output / "stats.json").read_text())
    acc = stats["accounting"]
    assert acc["balanced"] and acc["read"] == acc["kept"] + acc["dropped"] + acc["quarantined"]
    assert acc["quarantined"] >= 8 and acc["dropped"] > 0  # the demo's broken records and planted copies
    manifest = json.loads((demo_output / "shards" / "manifest.json").read_text())
    assert manifest["shards"] and all((demo_output / "shards" / s["file"]).is_file() for s in manifest["shards"])
    table = pq.read_table(demo_output / "shards" / manifest["shards"][0]["file"])
    assert str(table.schema.field("input_ids").type) == "fixed_size_list<element: uint32>[1024]"
    tok = json.loads((demo_output / "tokenizer" / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) + sum(t["id"] >= len(tok["model"]["vocab"]) for t in tok["added_tokens"]) == 3000
    assert (demo_output / "report" / "report.html").stat().st_size > 10_000


def test_two_process_smoke_train_on_demo_shards(demo_output):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "smoke-train", "--shards", str(demo_output / "shards"),
                           "--preset", "tiny", "--steps", "8", "--nproc", "2", "--lr", "3e-3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == 8
    assert summary["last_loss"] < summary["first_loss"]
