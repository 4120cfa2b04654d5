"""GPU check of the model: attention backends in bf16, and proxy-1b training throughput and MFU.

One script for one short device run (the default variants: an estimated 4-5 minutes on one H200,
mostly compiling; not yet timed since the cuDNN and accumulation variants were added). Needs only
torch (and this repo): batches are synthetic packed rows of several documents, so no shard files
travel. The `cudnn_fe` backend also needs nvidia-cudnn-frontend, which the device's image lacks
(without it, those variants are skipped). Carry the wheel of 1.16.0, the classic binding: 1.9 MB, no
dependencies, and it takes buffers as pointers, as torch's own cuDNN code does. Fetch it here:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl nvidia-cudnn-frontend==1.16.0

and on the device, with carry [".whl"]:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
        PYTHONPATH=/tmp/site python3 bench/gpu_check.py

Four parts:

1. every attention backend available on CUDA against a per-document fp32 reference, forward and
   gradients, on a random document layout, and the self-checks that `--attention cudnn` and
   `cudnn_fe` run (a backend's training variants are skipped if its check fails, as expected for
   `cudnn` on torch 2.11, which builds the cuDNN graph anew on every call);
2. a small model on CUDA: a packed row's logits against each document run alone;
3. the varlen attention kernels alone at proxy-1b's shape (16,384 tokens, 16 heads of 128): forward
   and forward + backward time and TFLOP/s, on one layout repeated and on a new layout every call
   (what training sees; it exposes per-layout set-up such as cuDNN building a graph);
4. `proxy-1b` at 16,384 tokens per row: training steps (bf16 autocast over fp32 weights, fused AdamW,
   grad clipping) in variants side by side (`--variants`): `torch.compile` of the whole model with
   the default (`varlen`) or a cuDNN attention (`cudnn`, `cudnn_fe`), on one document layout or a
   new one every step,
   one or two rows per forward pass, one or four forward passes per optimizer step (gradient
   accumulation, as `--grad-accum`), and on request eager - the anchor's setup -, the chunked loss, compiled
   blocks and inductor's max-autotune (minutes of GEMM autotuning): tokens/s and MFU against 990
   TFLOP/s dense bf16, Dynamo graph counts, and profiler tables of chosen variants (`--profile`).

The checks (1-3; the cuDNN backends' apart from the others') and each training variant run in a child
process of their own, so a kernel that kills its CUDA context, or a variant that leaks memory, costs
only its own part of the device run.
It prints markdown tables and writes everything to $OUT/gpu_check.json (else --out).
`--dry-run` runs the same code with tiny sizes on CPU, to catch bugs before spending device time (its
compiled variant traces with dynamo and AOT autograd but skips inductor's slow C++ code generation).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.attention import (SELF_CHECKED, DocumentLayout, attention_kernel, available_backends,  # noqa: E402
                             cudnn_self_check, select_backend)
from model.config import preset  # noqa: E402
from model.data import collate  # noqa: E402
from model.model import Transformer  # noqa: E402
from model.train import compile_packed, train_step  # noqa: E402

ANCHOR = {"name": "eager 1.22B llama-like, varlen_attn, fused AdamW (measured earlier on this H200 kind)",
          "tokens_per_s": 55_900, "mfu": 0.425}


def doc_lengths(total: int, mean: int, gen: torch.Generator) -> list[int]:
    """Random document lengths filling `total` tokens (exponential around `mean`, at least 16)."""
    out, left = [], total
    while left > 0:
        n = max(16, int(torch.empty(1).exponential_(1 / mean, generator=gen)))
        out.append(min(n, left))
        left -= out[-1]
    return out


def synthetic_rows(n_rows: int, seq_len: int, vocab: int, mean_doc: int, seed: int, one_layout: bool = False) -> list[dict]:
    """Packed rows as the mixing reader yields them: documents ending in EOS (2), then a padding tail.

    `one_layout`: every row gets the same document lengths (new tokens), so a kernel's per-layout
    set-up (cuDNN builds a graph per shape) is paid once, not in every timed step as with new layouts.
    """
    gen = torch.Generator().manual_seed(seed)
    rows, lengths = [], None
    for _ in range(n_rows):
        if lengths is None or not one_layout:
            real = seq_len - int(torch.randint(0, max(1, seq_len // 64), (1,), generator=gen))
            lengths = doc_lengths(real, mean_doc, gen)
        ids = torch.zeros(seq_len, dtype=torch.long)
        ids[:real] = torch.randint(3, vocab, (real,), generator=gen)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        ids[cu[1:].long() - 1] = 2
        rows.append({"input_ids": ids, "cu_seqlens": cu})
    return rows


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach(), ref.detach()
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def reference_attention(q, k, v, layout: DocumentLayout) -> torch.Tensor:
    """Per document, explicit causal softmax in fp32: the definition every backend must meet."""
    outs = []
    for a, b in zip(layout.boundaries, layout.boundaries[1:]):
        qs, ks, vs = (x[a:b].float().transpose(0, 1) for x in (q, k, v))
        scores = qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1])
        causal = torch.ones(b - a, b - a, dtype=torch.bool, device=q.device).tril()
        outs.append((scores.masked_fill(~causal, float("-inf")).softmax(-1) @ vs).transpose(0, 1))
    return torch.cat(outs)


def check_backends(device, backends, dtype, seq_len, n_rows, heads, head_dim, mean_doc) -> list[dict]:
    rows = synthetic_rows(n_rows, seq_len, 100, mean_doc, seed=1)
    layout = DocumentLayout.from_rows([r["cu_seqlens"] for r in rows], seq_len).to(device)
    t = n_rows * seq_len
    gen = torch.Generator(device=device).manual_seed(2)
    q, k, v, grad = (torch.randn(t, heads, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(4))
    ref_in = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    ref = reference_attention(*ref_in, layout)
    ref.backward(grad.float())
    results = []
    for name in backends:
        inputs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        try:
            out = attention_kernel(name)(*inputs, layout)
            out.backward(grad)
            errs = {"out": rel_err(out, ref)} | {f"d{n}": rel_err(x.grad, r.grad) for n, x, r in zip("qkv", inputs, ref_in)}
            ok = all(math.isfinite(e) and e < 1e-2 for e in errs.values())  # bf16 operands
            results.append({"backend": name, "ok": ok, **{k: float(f"{e:.3g}") for k, e in errs.items()}})
        except Exception as exc:  # report and carry on: one broken backend must not hide the others
            results.append({"backend": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return results


def check_packed_vs_alone(device, dtype, backend: str, seq_len: int) -> dict:
    """Logits of documents packed in one row equal those of each document on its own."""
    torch.manual_seed(3)
    model = Transformer(preset("tiny", vocab_size=1000, d_model=256, n_heads=2, n_layers=2, d_ff=688), backend).to(device)
    row = synthetic_rows(1, seq_len, 1000, seq_len // 6, seed=4)[0]
    batch = collate([row], eos_id=2).to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        packed = model(batch.input_ids, batch.layout)[0]
        worst = 0.0
        cu = row["cu_seqlens"].tolist()
        for a, b in zip(cu, cu[1:]):
            alone = collate([{"input_ids": row["input_ids"][a:b], "cu_seqlens": torch.tensor([0, b - a], dtype=torch.int32)}], 2).to(device)
            worst = max(worst, rel_err(packed[a:b], model(alone.input_ids, alone.layout)[0]))
    return {"backend": backend, "documents": len(cu) - 1, "max_rel_err": float(f"{worst:.3g}"), "ok": worst < 2e-2}


def cudnn_fixed_shape(max_docs: int):
    """The cudnn backend with one graph shape for every layout: `cu_seqlens` padded with empty documents
    to `max_docs` and the row length as `max_seqlen`. cuDNN builds a graph per (documents, longest)
    shape; this variant shows whether sparing those builds is worth the padding."""
    def kernel(q, k, v, layout):
        cu = layout.cu_seqlens
        padded = torch.cat([cu, cu[-1:].expand(max_docs + 1 - len(cu))])
        return torch.ops.xdp.cudnn_attention(q, k, v, padded, layout.seq_len)[0]
    return kernel


def attention_speed(device, backends: list[str], seq_len: int, heads: int, head_dim: int, mean_doc: int,
                    calls: int) -> list[dict]:
    """Forward and forward + backward time of each backend on one packed bf16 row (T, heads, head_dim).

    "same layout": one document layout every call; "new layout": a layout never seen before on every
    call, as in training, where each batch packs other documents. FLOPs count the causal pairs within
    documents: 4 * head_dim per pair and head forward, 2.5 times that backward (FlashAttention's count).
    Each kernel's output and gradients are first checked against the fp32 reference at this shape.
    """
    on_gpu = device.type == "cuda"
    layouts = [DocumentLayout.from_rows([r["cu_seqlens"] for r in synthetic_rows(1, seq_len, 100, mean_doc, seed=100 + i)],
                                        seq_len).to(device) for i in range(3 * calls + 1)]
    gen = torch.Generator(device=device).manual_seed(6)
    q, k, v, grad = (torch.randn(seq_len, heads, head_dim, device=device, dtype=torch.bfloat16, generator=gen)
                     for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    ref_in = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = reference_attention(*ref_in, layouts[0])
    ref_grads = torch.autograd.grad(ref, ref_in, grad.float())

    def fwd_flops(layout):
        return 4 * head_dim * heads * layout.causal_pairs()

    def timed(fn) -> float:
        if on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def median_time_mean_flops(samples):
        return statistics.median(t for t, _ in samples), statistics.mean(f for _, f in samples)

    kernels = {name: attention_kernel(name) for name in backends}
    if "cudnn" in kernels:
        kernels["cudnn_fixed"] = cudnn_fixed_shape(max_docs=64)
    results = []
    for name, kernel in kernels.items():
        fresh = iter(layouts[1:])  # every kernel sees the same new layouts
        try:
            out = kernel(q, k, v, layouts[0])  # also the warm-up: kernel load, handles, a first graph
            grads = torch.autograd.grad(out, (q, k, v), grad)
            err = max([rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)])
            for pattern in ("same layout", "new layout"):
                fwd, both = [], []
                for _ in range(calls):
                    layout_f, layout_b = (layouts[0], layouts[0]) if pattern == "same layout" else (next(fresh), next(fresh))
                    with torch.no_grad():
                        fwd.append((timed(lambda: kernel(q, k, v, layout_f)), fwd_flops(layout_f)))
                    both.append((timed(lambda: torch.autograd.grad(kernel(q, k, v, layout_b), (q, k, v), grad)),
                                 fwd_flops(layout_b)))
                (f_s, f_flops), (b_s, b_flops) = (median_time_mean_flops(x) for x in (fwd, both))
                results.append({"backend": name, "layout": pattern, "max_rel_err": float(f"{err:.3g}"),
                                "fwd_ms": round(f_s * 1e3, 2), "fwd_bwd_ms": round(b_s * 1e3, 2),
                                "fwd_tflops": round(f_flops / f_s / 1e12, 1),
                                "fwd_bwd_tflops": round(3.5 * b_flops / b_s / 1e12, 1)})
        except Exception as exc:
            results.append({"backend": name, "error": f"{type(exc).__name__}: {exc}"})
    return results


@dataclass(frozen=True)
class Variant:
    """One way to run the training step. `compile`: None (eager), "model" (the whole model, with
    `mode`) or "blocks" (each transformer block on its own, as torchtitan does), both through the
    training loop's `compile_packed` (one graph for every document layout). `new_layouts`: every step
    packs other documents, as in training (a kernel that sets up per layout pays for it in the timed
    steps); otherwise all steps share one layout and only the tokens change. `rows` per forward pass,
    `accum` forward passes per optimizer step (the training loop's own `train_step`)."""

    name: str
    compile: str | None = None
    mode: str | None = None
    rows: int = 1
    accum: int = 1
    loss_chunk: int = 0
    attention: str = "auto"
    new_layouts: bool = False


VARIANTS = {v.name: v for v in (
    Variant("eager"),
    Variant("compiled", compile="model"),
    Variant("compiled_rows2", compile="model", rows=2),
    Variant("compiled_cudnn", compile="model", attention="cudnn"),
    Variant("compiled_new", compile="model", new_layouts=True),
    Variant("compiled_cudnn_new", compile="model", attention="cudnn", new_layouts=True),
    Variant("compiled_cudnn_rows2", compile="model", rows=2, attention="cudnn"),
    Variant("compiled_new_accum4", compile="model", accum=4, new_layouts=True),
    Variant("compiled_cudnn_new_accum4", compile="model", accum=4, attention="cudnn", new_layouts=True),
    Variant("compiled_cudnn_fe_new", compile="model", attention="cudnn_fe", new_layouts=True),
    Variant("compiled_cudnn_fe_new_accum4", compile="model", accum=4, attention="cudnn_fe", new_layouts=True),
    Variant("compiled_chunk", compile="model", loss_chunk=4096),
    Variant("compiled_blocks", compile="blocks"),
    Variant("compiled_autotune", compile="model", mode="max-autotune-no-cudagraphs"),
)}


def compile_model(model: Transformer, variant: Variant, compile_backend: str):
    """The callable a training step runs: the model itself, compiled whole, or with compiled blocks."""
    mode = variant.mode if compile_backend == "inductor" else None  # modes are inductor's
    if variant.compile == "model":
        return compile_packed(model, backend=compile_backend, mode=mode)
    if variant.compile == "blocks":
        for i, layer in enumerate(model.layers):
            model.layers[i] = compile_packed(layer, backend=compile_backend, mode=mode)
    return model


def train_throughput(device, cfg_name: str, seq_len: int, variant: Variant, warmup: int, steps: int, mean_doc: int,
                     peak: float, compile_backend: str, profile_to: Path | None = None) -> dict:
    on_gpu = device.type == "cuda"
    # On CPU (dry run) the masked kernel: its graph does not depend on where documents start.
    backend = select_backend(device, variant.attention) if on_gpu else "sdpa_mask"
    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    model_cfg = preset(cfg_name, **({} if on_gpu else {"vocab_size": 1000}))
    model = Transformer(model_cfg, backend, loss_chunk=variant.loss_chunk).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=on_gpu)
    step_fn = compile_model(model, variant, compile_backend)
    n_rows = (warmup + steps if variant.new_layouts else 4) * variant.rows * variant.accum
    rows = synthetic_rows(n_rows, seq_len, model_cfg.vocab_size, mean_doc, seed=5, one_layout=not variant.new_layouts)
    micro = [collate(rows[i:i + variant.rows], eos_id=2).to(device) for i in range(0, len(rows), variant.rows)]
    batches = [micro[i:i + variant.accum] for i in range(0, len(micro), variant.accum)]  # one list per step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(micro_batches) -> float:
        loss, _ = train_step(step_fn, model, optimizer, micro_batches, grad_clip=1.0, autocast=autocast)
        return loss.item()  # synchronises

    times, losses = [], []
    t_compile = time.perf_counter()
    for i in range(warmup + steps):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(step(batches[i % len(batches)]))
        if i == warmup - 1:
            t_compile = time.perf_counter() - t_compile
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = variant.rows * variant.accum * seq_len
    flops = statistics.mean(model.training_flops(b.layout) for b in micro) * variant.accum
    result = {
        "variant": variant.name, "preset": cfg_name, "params": model.num_params(), "rows": variant.rows,
        "accum": variant.accum, "seq_len": seq_len,
        "docs_per_row": statistics.mean(len(b.layout.boundaries) - 1 for b in micro) / variant.rows,
        "backend": backend, "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()), "warmup_s": round(t_compile, 1),
        "step_ms": round(step_s * 1e3, 1), "step_ms_spread": round((max(times) - min(times)) * 1e3, 1),
        "step_ms_all": [round(t * 1e3, 1) for t in times], "tokens_per_s": round(tokens / step_s),
        "tflops": round(flops / step_s / 1e12, 1), "mfu": round(flops / step_s / (peak * 1e12), 4),
        "mfu_6n": round(6 * model.num_params() * tokens / step_s / (peak * 1e12), 4),
        "losses_finite": all(math.isfinite(x) for x in losses), "first_loss": losses[0], "last_loss": losses[-1],
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if on_gpu else None,
    }
    if profile_to is not None:
        try:
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
            with torch.profiler.profile(activities=activities) as prof:
                for batch in batches[:2]:
                    step(batch)
            sort = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
            profile_to.write_text(prof.key_averages().table(sort_by=sort, row_limit=60, max_name_column_width=100) + "\n")
        except Exception:  # the profile is an extra: keep the timing
            traceback.print_exc()
    return result


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# Parts 1-3 run as two child processes: the cuDNN backends, whose kernels have never run on this
# device, apart from the others, so a kernel that kills its CUDA context cannot take their results too.
CHECK_PARTS = ("checks", "checks_cudnn")


def run_checks(device: torch.device, dry: bool, part: str) -> dict:
    """Parts 1-3 for the backends of `part`: the backends against the reference, then ("checks") a
    packed row against its documents, or ("checks_cudnn") the self-checks, then the kernels' speed."""
    dtype = torch.bfloat16  # on CPU too, so a dry run follows the GPU's dtype flow
    cudnn_part = part == "checks_cudnn"
    backends = [b for b in available_backends(device) if (b in SELF_CHECKED) == cudnn_part]
    result = {"backends": check_backends(device, backends, dtype, seq_len=256 if dry else 8192, n_rows=2,
                                         heads=2 if dry else 16, head_dim=16 if dry else 128, mean_doc=40 if dry else 1024)}
    if cudnn_part:
        for backend in backends:
            result[f"{backend}_self_check"] = cudnn_self_check(str(device), backend) or "passed"
        speed_backends = backends
    else:
        best = backends[0] if device.type == "cuda" else "sdpa_docs"
        result["packed_vs_alone"] = check_packed_vs_alone(device, dtype, best, 128 if dry else 4096)
        speed_backends = [b for b in backends if b in ("flash", "varlen")] or ["sdpa_docs"]
    result["attention_speed"] = attention_speed(device, speed_backends, seq_len=512 if dry else 16_384,
                                                heads=2 if dry else 16, head_dim=16 if dry else 128,
                                                mean_doc=64 if dry else 2048, calls=3 if dry else 10) if speed_backends else []
    return result


def run_variant(device: torch.device, dry: bool, name: str, args) -> dict:
    """Part 4 for one variant."""
    cfg_name, seq_len, mean_doc = ("tiny", 256, 40) if dry else ("proxy-1b", 16_384, 2048)
    profile_to = Path(args.profile_dir) / f"profile_{name}.txt" if name in args.profile else None
    r = train_throughput(device, cfg_name, seq_len, VARIANTS[name], warmup=3, steps=2 if dry else args.steps,
                         mean_doc=mean_doc, peak=args.peak_tflops, compile_backend="aot_eager" if dry else "inductor",
                         profile_to=profile_to)
    r["vs_anchor_tokens_per_s"] = round(r["tokens_per_s"] / ANCHOR["tokens_per_s"], 3)
    return r


def run_part(part: str, args) -> int:
    """Run one part in this process and write its JSON to --out (the parent reads it)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"torch": torch.__version__, "python": platform.python_version(),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"}
    if part in CHECK_PARTS:
        result |= run_checks(device, args.dry_run, part)
    else:
        try:
            result["training"] = run_variant(device, args.dry_run, part, args)
        except Exception as exc:  # a variant that cannot run is a row with its error, as a crash would be
            traceback.print_exc()
            result["training"] = {"variant": part, "error": f"{type(exc).__name__}: {str(exc)[-500:]}"}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_isolated(part: str, args, workdir: Path) -> dict:
    """One part in a child process, so that a kernel that kills its CUDA context (or leaks memory) costs
    only that part and the device run still measures the rest."""
    part_out = workdir / f"{part}.json"
    cmd = [sys.executable, __file__, "--part", part, "--out", str(part_out), "--steps", str(args.steps),
           "--peak-tflops", str(args.peak_tflops), "--profile", ",".join(args.profile), "--profile-dir", args.profile_dir]
    try:
        rc = subprocess.run(cmd + (["--dry-run"] if args.dry_run else []), timeout=args.part_timeout).returncode
        ended = f"exited with status {rc}"
    except subprocess.TimeoutExpired:
        ended = f"was stopped after {args.part_timeout} s"
    if part_out.exists():
        return json.loads(part_out.read_text())
    error = f"part {part!r} {ended} and left no result (its output is above)"
    if part in CHECK_PARTS:
        return {"backends": [{"backend": f"all of {part!r}", "ok": False, "error": error}]}
    return {"training": {"variant": part, "error": error}}


def skip_reason(name: str, report: dict, on_gpu: bool) -> str | None:
    """Why training variant `name` is not worth a child process: on a GPU, a cuDNN variant whose
    backend failed (or never reached) the self-check in part 1, as select_backend would refuse it."""
    backend = VARIANTS[name].attention
    verdict = report.get(f"{backend}_self_check", f"the {backend} backend is not available here")
    if on_gpu and backend in SELF_CHECKED and verdict != "passed":
        return f"{backend} self-check: {verdict}"
    return None


def failures_in(report: dict) -> int:
    return (sum(not r["ok"] for r in report.get("backends", []))
            + sum(report.get(f"{backend}_self_check", "passed") != "passed" for backend in SELF_CHECKED)
            + (not report.get("packed_vs_alone", {}).get("ok", False))
            + sum("error" in r for r in report.get("attention_speed", []))
            + sum("error" in r or not r.get("losses_finite") for r in report.get("training", []) if "skipped" not in r))


def names(text: str) -> list[str]:
    """A comma-separated list of variant names; "" is none."""
    return [name for name in text.split(",") if name]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, on CPU unless CUDA is there")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "bench/results"), "gpu_check.json"))
    ap.add_argument("--peak-tflops", type=float, default=990.0)
    ap.add_argument("--steps", type=int, default=10)
    default_variants = ["compiled", "compiled_new", "compiled_new_accum4", "compiled_cudnn_new", "compiled_cudnn_new_accum4",
                        "compiled_cudnn_fe_new", "compiled_cudnn_fe_new_accum4"]
    ap.add_argument("--variants", type=names, default=default_variants,
                    help=f"training variants, in order (default: {','.join(default_variants)}, an estimated 4-5 "
                         f"minutes on an H200); any of {', '.join(VARIANTS)}")
    default_profiles = ["compiled_new", "compiled_cudnn_fe_new"]
    ap.add_argument("--profile", metavar="VARIANTS", type=names, default=default_profiles,
                    help="write a torch.profiler table of two steps of each of these variants beside --out "
                         f"(default: {','.join(default_profiles)}; \"\" for none)")
    ap.add_argument("--part-timeout", type=int, default=300, help="seconds each part may run (default: 300)")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    ap.add_argument("--profile-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    unknown = [v for v in args.variants + args.profile if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run", file=sys.stderr)
        return 2
    if args.part:
        return run_part(args.part, args)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    args.profile_dir = args.profile_dir or str(out.parent)
    report = {"peak_tflops": args.peak_tflops, "anchor": ANCHOR, "training": []}
    with tempfile.TemporaryDirectory() as workdir:
        for part in CHECK_PARTS:
            found = run_isolated(part, args, Path(workdir))
            for key in ("backends", "attention_speed"):
                report[key] = report.get(key, []) + found.pop(key, [])
            report |= found
        out.write_text(json.dumps(report, indent=2) + "\n")
        print("\n## attention backends vs per-document fp32 reference (bf16)\n")
        print(table(report["backends"], ["backend", "ok", "out", "dq", "dk", "dv", "error"]) + "\n")
        for backend in SELF_CHECKED:
            if f"{backend}_self_check" in report:
                print(f"{backend} self-check: {report[f'{backend}_self_check']}\n")
        if "packed_vs_alone" in report:
            print("## packed row vs documents alone\n")
            print(table([report["packed_vs_alone"]], ["backend", "documents", "max_rel_err", "ok"]) + "\n")
        if "attention_speed" in report:
            print("## attention kernels alone (bf16, %s)\n" % ("tiny" if args.dry_run else "16,384 tokens, 16 heads x 128"))
            print(table(report["attention_speed"], ["backend", "layout", "max_rel_err", "fwd_ms", "fwd_bwd_ms",
                                                    "fwd_tflops", "fwd_bwd_tflops", "error"]) + "\n")
        for name in args.variants:
            reason = skip_reason(name, report, torch.cuda.is_available())
            r = {"variant": name, "skipped": reason} if reason else run_isolated(name, args, Path(workdir))["training"]
            report["training"].append(r)
            out.write_text(json.dumps(report, indent=2) + "\n")
            print(f"{name}: " + ", ".join(f"{k} {r.get(k)}" for k in ("step_ms", "tokens_per_s", "mfu", "warmup_s", "graphs", "error", "skipped") if k in r), flush=True)
    print("\n## %s training step (anchor: %s tok/s, %.1f%% MFU)\n"
          % ("tiny, 256 tokens per row (dry run)" if args.dry_run else "proxy-1b, 16,384 tokens per row",
             ANCHOR["tokens_per_s"], 100 * ANCHOR["mfu"]))
    print(table(report["training"], ["variant", "rows", "accum", "docs_per_row", "graphs", "graph_breaks", "warmup_s", "step_ms",
                                     "step_ms_spread", "tokens_per_s", "vs_anchor_tokens_per_s", "tflops", "mfu",
                                     "mfu_6n", "peak_mem_gib", "error", "skipped"]))
    failures = failures_in(report)
    print(f"\nwrote {out}; failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
