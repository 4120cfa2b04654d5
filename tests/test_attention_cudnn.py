"""The cuDNN backend's glue on CPU: cuDNN itself needs a GPU (bench/gpu_check.py runs it there), so
these tests give the two aten ops a CPU kernel that does what the cuDNN one is documented to do, and
check what xdp adds around them: argument order, the logsumexp round trip in both of the layouts torch
versions have used, autograd, torch.compile, and the self-check that guards `--attention cudnn`."""
from __future__ import annotations

import math
import time

import pytest
import torch

from model import attention
from model.attention import DocumentLayout, attention_kernel, cudnn_self_check, select_backend
from test_model_core import document_scores, reference_attention


def reference_logsumexp(q, k, cu):
    """(T, H) logsumexp of each query's causal scores within its document, as the kernels keep it."""
    return torch.cat([scores.logsumexp(-1).transpose(0, 1) for _, _, scores in document_scores(q, k, cu)])


def reference_grads(q, k, v, grad_out, cu):
    """dq, dk, dv of `reference_attention` worked out by hand (kernels run below autograd)."""
    grads = [torch.zeros(x.shape, dtype=torch.float64) for x in (q, k, v)]
    scale = 1 / math.sqrt(q.shape[-1])
    for a, b, scores in document_scores(q, k, cu):
        qs, ks, vs, gs = (x[a:b].double().transpose(0, 1) for x in (q, k, v, grad_out))
        p = scores.softmax(-1)
        dp = gs @ vs.transpose(1, 2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        for grad, part in zip(grads, (ds @ ks * scale, ds.transpose(1, 2) @ qs * scale, p.transpose(1, 2) @ gs)):
            grad[a:b] = part.transpose(0, 1)
    return grads


class CpuCudnn:
    """CPU kernels for aten's `_cudnn_attention_forward/backward` on ragged (T, H, D) inputs.

    `lse_layout` is the logsumexp shape the forward returns: "thd1" (T, H, 1) or "ht" (H, T). The
    backward insists on getting it back in that shape. `broken_after`: gradients of queries past this
    in-document position come back as zeros, the way a kernel launched for too short a sequence fails.
    `seconds_per_call`: every forward takes at least this long, as when each call builds its graph.
    """

    def __init__(self, lse_layout: str, broken_after: int | None = None, seconds_per_call: float = 0.0):
        self.lse_layout, self.broken_after, self.seconds_per_call = lse_layout, broken_after, seconds_per_call
        self.lib = torch.library.Library("aten", "IMPL")
        self.lib.impl("_cudnn_attention_forward", self.forward, "CPU")
        self.lib.impl("_cudnn_attention_backward", self.backward, "CPU")

    def forward(self, q, k, v, bias, cu_q, cu_k, max_q, max_k, want_lse, dropout=0.0, causal=False, debug=False, *,
                scale=None):  # the dispatcher leaves out arguments equal to their defaults
        assert bias is None and want_lse and dropout == 0.0 and causal and not debug and scale is None
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and max_q == max_k
        time.sleep(self.seconds_per_call)  # as a graph built anew on every call costs
        out, lse = reference_attention(q, k, v, cu_q.tolist()), reference_logsumexp(q, k, cu_q.tolist()).float()
        lse = lse[..., None] if self.lse_layout == "thd1" else lse.t().contiguous()
        none = torch.empty(0)
        return out.to(q.dtype), lse, cu_q, cu_k, max_q, max_k, none, none, none

    def backward(self, grad_out, q, k, v, out, lse, seed, offset, bias, cu_q, cu_k, max_q, max_k, dropout, causal,
                 *, scale=None):
        t, h = q.shape[:2]
        assert lse.shape == ((t, h, 1) if self.lse_layout == "thd1" else (h, t))
        assert bias is None and dropout == 0.0 and causal and grad_out.is_contiguous()
        grads = reference_grads(q, k, v, grad_out, cu_q.tolist())
        if self.broken_after is not None:
            positions = DocumentLayout.from_rows([cu_q], t).positions
            grads[0][positions > self.broken_after] = 0
        return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v)))

    def close(self):
        self.lib._destroy()
        cudnn_self_check.cache_clear()


@pytest.fixture(params=["thd1", "ht"])
def cpu_cudnn(request):
    kernels = CpuCudnn(request.param)
    yield kernels
    kernels.close()


def packed_inputs(seed=0, dtype=torch.float32):
    cu = [0, 5, 22, 23, 48]  # a 1-token document and a padding tail, as DocumentLayout makes them
    layout = DocumentLayout.from_rows([torch.tensor(cu[:-1], dtype=torch.int32)], seq_len=48)
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(48, 3, 8, generator=gen, dtype=dtype) for _ in range(4))
    return layout, cu, (q, k, v), grad


def grads_of(fn, qkv, grad):
    inputs = [x.detach().clone().requires_grad_() for x in qkv]
    out = fn(*inputs)
    return out, torch.autograd.grad(out, inputs, grad)


@pytest.mark.parametrize("compiled", [False, True])
def test_cudnn_kernel_is_per_document_attention_with_its_gradients(cpu_cudnn, compiled):
    layout, cu, qkv, grad = packed_inputs()
    kernel = attention_kernel("cudnn")
    if compiled:  # the custom ops' fake kernels and autograd must trace
        kernel = torch.compile(kernel, backend="aot_eager", fullgraph=True)
    out, got = grads_of(lambda q, k, v: kernel(q, k, v, layout), qkv, grad)
    ref, want = grads_of(lambda q, k, v: reference_attention(q, k, v, cu), qkv, grad)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-6)


def test_self_check_passes_a_correct_kernel_and_catches_a_wrong_gradient():
    kernels = CpuCudnn("thd1")
    try:
        assert cudnn_self_check("cpu") is None
    finally:
        kernels.close()
    kernels = CpuCudnn("thd1", broken_after=64)
    try:
        assert "dq differs" in cudnn_self_check("cpu")
    finally:
        kernels.close()


def test_self_check_refuses_a_kernel_that_builds_its_graph_on_every_call(monkeypatch):
    """torch 2.11's ragged cuDNN path builds its graph on every call: right, but seconds per step."""
    monkeypatch.setattr(attention, "_builds_graphs", lambda device: True)  # as on CUDA
    monkeypatch.setattr(attention, "GRAPH_BUILD_SECONDS", 0.05)
    for seconds_per_call, verdict in ((0.1, "builds cuDNN's graph anew on every call"), (0.0, None)):
        kernels = CpuCudnn("ht", seconds_per_call=seconds_per_call)
        try:
            problem = cudnn_self_check("cpu")
        finally:
            kernels.close()
        assert problem is None if verdict is None else verdict in problem


def test_self_check_reports_a_missing_kernel():
    assert "NotImplementedError" in cudnn_self_check("cpu")  # this CPU build has no cuDNN kernels
    cudnn_self_check.cache_clear()


def test_cudnn_needs_cuda_is_never_picked_by_auto_and_must_pass_its_self_check(monkeypatch):
    assert "cudnn" not in attention.available_backends("cpu")
    with pytest.raises(ValueError, match="not available on cpu"):
        select_backend("cpu", "cudnn")
    # A CUDA machine with cuDNN but neither FlashAttention: "cuda" is only a name here, nothing runs.
    monkeypatch.setattr(attention, "_cudnn_ragged_installed", lambda: True)
    monkeypatch.setattr(attention, "_torch_varlen", lambda: None)
    monkeypatch.setattr(attention, "_flash_attn_varlen", lambda: None)
    assert attention.available_backends("cuda")[0] == "cudnn"
    assert select_backend("cuda") == "sdpa_docs"
    monkeypatch.setattr(attention, "cudnn_self_check", lambda device, backend: "dq differs (relative error 0.9)")
    with pytest.raises(ValueError, match="failed its self-check on cuda: dq differs"):
        select_backend("cuda", "cudnn")
    monkeypatch.setattr(attention, "cudnn_self_check", lambda device, backend: None)
    assert select_backend("cuda", "cudnn") == "cudnn"


def test_compiled_model_on_cudnn_trains_as_on_sdpa_docs(cpu_cudnn):
    """The whole model with the cuDNN backend, compiled in one graph: loss and gradients as sdpa_docs gives."""
    from model.config import preset
    from model.data import collate
    from model.model import Transformer

    rows = [{"input_ids": torch.randint(3, 300, (64,), generator=torch.Generator().manual_seed(r)),
             "cu_seqlens": torch.tensor(cu, dtype=torch.int32)} for r, cu in enumerate([[0, 9, 40, 64], [0, 30]])]
    batch = collate(rows, eos_id=2)
    results = []
    for backend in ("cudnn", "sdpa_docs"):
        torch.manual_seed(0)
        model = Transformer(preset("tiny", vocab_size=300, max_seq_len=64), backend)
        step = torch.compile(model, backend="aot_eager", fullgraph=True) if backend == "cudnn" else model
        loss = step(batch.input_ids, batch.layout, batch.labels)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss, grads), (want_loss, want_grads) = results
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_compile_packed_builds_one_graph_for_every_document_layout(cpu_cudnn):
    """Each batch packs other documents (their count and the longest change): one graph from the first
    step on, not a graph for the first layout that the second batch throws away for a second compile."""
    from torch._dynamo.utils import counters

    from model.config import preset
    from model.data import collate
    from model.model import Transformer
    from model.train import LAYOUT_SOURCES, compile_packed

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=300, max_seq_len=64), "cudnn")
    shapes = set()
    with torch.compiler.config.patch(dynamic_sources="L['x']"):  # the user's own, kept
        step = compile_packed(model, backend="aot_eager")
        compile_packed(model, backend="aot_eager")
        assert torch.compiler.config.dynamic_sources == f"L['x'],{LAYOUT_SOURCES}"
        for r, cu in enumerate([[0, 9, 40, 64], [0, 30], [0, 5, 6, 20, 50], [0, 64]]):
            row = {"input_ids": torch.randint(3, 300, (64,), generator=torch.Generator().manual_seed(r)),
                   "cu_seqlens": torch.tensor(cu, dtype=torch.int32)}
            batch = collate([row], eos_id=2)
            shapes.add((len(batch.layout.cu_seqlens), batch.layout.max_seqlen))
            step(batch.input_ids, batch.layout, batch.labels).backward()
    assert len(shapes) == 4
    assert counters["stats"]["unique_graphs"] == 1
