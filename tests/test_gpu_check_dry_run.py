"""bench/gpu_check.py runs on a lent GPU for a few minutes at most, so it must not meet its first bug
there: its dry run (tiny sizes, CPU) goes through every part, each in its own child process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_covers_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--variants", "compiled_cudnn_new_accum4,eager", "--profile", "eager"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["backends"]] == ["sdpa_mask", "sdpa_docs"]
    assert all(r["ok"] for r in report["backends"]) and report["packed_vs_alone"]["ok"]
    assert {r["layout"] for r in report["attention_speed"]} == {"same layout", "new layout"}
    assert all(r["max_rel_err"] < 1e-2 for r in report["attention_speed"])
    rows = {r["variant"]: r for r in report["training"]}
    assert list(rows) == ["compiled_cudnn_new_accum4", "eager"]
    assert all(r["losses_finite"] and r["step_ms"] > 0 for r in rows.values())
    accum = rows["compiled_cudnn_new_accum4"]
    # a new layout every forward pass, one graph for all of them
    assert accum["graphs"] == 1 and accum["graph_breaks"] == 0
    # four 256-token rows per optimizer step: tokens/s counts all of them
    assert accum["accum"] == 4 and accum["tokens_per_s"] == pytest.approx(4 * 256 / (accum["step_ms"] / 1e3), rel=0.01)
    assert (tmp_path / "profile_eager.txt").stat().st_size > 0
    assert "failures: 0" in proc.stdout


def test_a_gpu_run_skips_cudnn_variants_whose_backend_failed_its_self_check():
    """torch 2.11 builds cuDNN's graph on every call: its variants would spend minutes of device time
    on a backend that select_backend refuses anyway. A skipped row is not a failure of its own."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    failed = {"cudnn_self_check": "each call takes 42 ms even for a 512-token row"}
    assert "42 ms" in gpu_check.skip_reason("compiled_cudnn_new_accum4", failed, on_gpu=True)
    assert "not available" in gpu_check.skip_reason("compiled_cudnn_new", {}, on_gpu=True)
    assert "not available" in gpu_check.skip_reason("compiled_cudnn_fe_new", failed, on_gpu=True)  # no wheel
    assert gpu_check.skip_reason("compiled_cudnn_fe_new", {"cudnn_fe_self_check": "passed"}, on_gpu=True) is None
    assert gpu_check.skip_reason("compiled_new_accum4", failed, on_gpu=True) is None
    assert gpu_check.skip_reason("compiled_cudnn_new", {"cudnn_self_check": "passed"}, on_gpu=True) is None
    assert gpu_check.skip_reason("compiled_cudnn_new", failed, on_gpu=False) is None  # a dry run on CPU runs it
    rows = [{"variant": "compiled_cudnn_new", "skipped": "cudnn self-check: ..."},
            {"variant": "compiled_new", "losses_finite": True}]
    assert gpu_check.failures_in({"packed_vs_alone": {"ok": True}, "training": rows}) == 0
    broken = {"backends": [{"ok": False}], "cudnn_self_check": "wrong gradients", "packed_vs_alone": {"ok": False},
              "attention_speed": [{"error": "OOM"}], "training": [{"variant": "eager", "losses_finite": False}]}
    assert gpu_check.failures_in(broken) == 5  # each kind of failure counts, so the check exits non-zero
