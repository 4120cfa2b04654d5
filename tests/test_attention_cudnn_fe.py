"""The `cudnn_fe` backend's glue on CPU. cuDNN needs a GPU (bench/gpu_check.py runs it there), so these
tests stand a CPU double in for the built cuDNN graphs. The double reads its inputs as cuDNN's ragged
layout defines them: offsets in elements, per-document lengths, the documents padded with empty ones up
to the graph's batch, statistics (T, heads). It checks what xdp adds around the graphs: the index
tensors, the buffers, the graph cache's shapes, autograd, torch.compile and the self-check."""
from __future__ import annotations

import pytest
import torch

from model import cudnn_frontend
from model.attention import (DocumentLayout, attention_kernel, available_backends, cudnn_self_check,
                             select_backend)
from model.cudnn_frontend import Shape, batch_bucket, tokens_bucket
from test_attention_cudnn import reference_grads, reference_logsumexp
from test_model_core import reference_attention


class CpuGraph:
    """A "built graph" for `shape` that computes on the CPU what cuDNN's graph computes on the GPU."""

    def __init__(self, shape: Shape, backward: bool):
        self.shape, self.backward = shape, backward

    def documents(self, values) -> list[int]:
        """The documents' boundaries in tokens, after checking the index tensors against the graph."""
        s = self.shape
        offsets, stats_offsets, lengths = values["offsets"], values["stats_offsets"], values["seq_len"]
        assert offsets.shape == stats_offsets.shape == (s.batch + 1, 1, 1, 1) and lengths.shape == (s.batch, 1, 1, 1)
        assert offsets.dtype == stats_offsets.dtype == torch.int64 and lengths.dtype == torch.int32
        offsets, stats_offsets, lengths = offsets.flatten(), stats_offsets.flatten(), lengths.flatten()
        assert torch.equal(offsets, stats_offsets * s.head_dim) and torch.equal(stats_offsets % s.heads, 0 * stats_offsets)
        cu = (stats_offsets // s.heads).tolist()
        assert lengths.tolist() == [b - a for a, b in zip(cu, cu[1:])] and cu[-1] == len(values["q"]) <= s.tokens
        docs = [b for a, b in zip(cu, cu[1:]) if b > a]
        assert cu[:len(docs) + 1] == [0, *docs]  # real documents first, then empty ones at the end
        return cu[:len(docs) + 1]

    def run(self, values: dict[str, torch.Tensor], device) -> None:
        cu = self.documents(values)
        q, k, v = values["q"], values["k"], values["v"]
        assert values["stats"].shape == (len(q), self.shape.heads) and values["stats"].dtype == torch.float32
        if not self.backward:
            values["o"].copy_(reference_attention(q, k, v, cu))
            values["stats"].copy_(reference_logsumexp(q, k, cu))
            return
        torch.testing.assert_close(values["stats"], reference_logsumexp(q, k, cu).float())  # what the forward stored
        for role, grad in zip(("dq", "dk", "dv"), reference_grads(q, k, v, values["do"], cu)):
            values[role].copy_(grad)


@pytest.fixture
def cpu_graphs(monkeypatch):
    """The graphs the ops asked for, by shape, each a CpuGraph."""
    built: dict[tuple[Shape, bool], CpuGraph] = {}
    monkeypatch.setattr(cudnn_frontend, "graph",
                        lambda shape, backward: built.setdefault((shape, backward), CpuGraph(shape, backward)))
    yield built
    cudnn_self_check.cache_clear()


def test_buckets_keep_a_run_on_few_graph_shapes():
    assert [batch_bucket(n) for n in (1, 32, 33, 64, 65, 512, 513, 1100)] == [32, 32, 64, 64, 128, 512, 1024, 1536]
    assert [tokens_bucket(n) for n in (48, 1024, 1025, 16_384, 16_385, 32_768, 32_769, 70_000)] == \
        [1024, 1024, 2048, 16_384, 32_768, 32_768, 65_536, 98_304]


@pytest.mark.parametrize("compiled", [False, True])
def test_cudnn_fe_kernel_is_per_document_attention_with_its_gradients(cpu_graphs, compiled):
    cu = [0, 5, 22, 23, 48]  # a 1-token document and a padding tail
    layout = DocumentLayout.from_rows([torch.tensor(cu[:-1], dtype=torch.int32)], seq_len=48)
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(48, 3, 8, generator=gen) for _ in range(4))
    kernel = attention_kernel("cudnn_fe")
    if compiled:  # the custom ops' fake kernels and autograd must trace
        kernel = torch.compile(kernel, backend="aot_eager", fullgraph=True)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = kernel(*inputs, layout)
    got = torch.autograd.grad(out, inputs, grad)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu), rtol=1e-5, atol=1e-6)
    for g, w in zip(got, reference_grads(q, k, v, grad, cu)):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-6)
    assert set(cpu_graphs) == {(Shape(32, 3, 8, 1024, torch.float32, 0), backward) for backward in (False, True)}


def test_compiled_model_on_cudnn_fe_trains_as_on_sdpa_docs_and_reuses_graphs(cpu_graphs):
    """Four batches of other documents: one Dynamo graph, the same losses and gradients as
    sdpa_docs, and one cuDNN graph pair for all of them: the layouts differ, the buckets do not."""
    from torch._dynamo.utils import counters

    from model.config import preset
    from model.data import collate
    from model.model import Transformer
    from model.train import compile_packed

    torch._dynamo.reset()
    counters.clear()
    layouts = [[0, 9, 40, 64], [0, 30], [0, 5, 6, 20, 50], [0, 12, 40, 64]]
    batches = [collate([{"input_ids": torch.randint(3, 300, (64,), generator=torch.Generator().manual_seed(r)),
                         "cu_seqlens": torch.tensor(cu, dtype=torch.int32)}], eos_id=2) for r, cu in enumerate(layouts)]
    results = []
    for backend in ("cudnn_fe", "sdpa_docs"):
        torch.manual_seed(0)
        model = Transformer(preset("tiny", vocab_size=300, max_seq_len=64), backend)
        losses = []
        with torch.compiler.config.patch(dynamic_sources=""):  # compile_packed adds to it: not for later tests
            step = compile_packed(model, backend="aot_eager") if backend == "cudnn_fe" else model
            for batch in batches:
                loss = step(batch.input_ids, batch.layout, batch.labels)
                loss.backward()
                losses.append(loss.detach())
        results.append((losses, [p.grad for p in model.parameters()]))
    (losses, grads), (want_losses, want_grads) = results
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1
    assert {(s.batch, s.tokens, backward) for s, backward in cpu_graphs} == {(32, 1024, False), (32, 1024, True)}


def test_cudnn_fe_self_check_passes_the_double_and_needs_the_frontend_on_cuda(cpu_graphs, monkeypatch):
    assert cudnn_self_check("cpu", "cudnn_fe") is None
    assert {backward for _, backward in cpu_graphs} == {False, True}  # the check ran both graphs
    with pytest.raises(ValueError, match="not available on cpu"):
        select_backend("cpu", "cudnn_fe")
    monkeypatch.setattr(cudnn_frontend, "frontend", lambda: None)
    assert "cudnn_fe" not in available_backends("cuda")
    with pytest.raises(ValueError, match="not available on cuda"):
        select_backend("cuda", "cudnn_fe")
    monkeypatch.setattr(cudnn_frontend, "frontend", lambda: object())
    assert "cudnn_fe" in available_backends("cuda")


def test_cudnn_fe_graphs_describe_with_the_installed_frontend():
    """Where nvidia-cudnn-frontend is installed (never in CI, which skips this; bench/gpu_check.py builds
    and runs the graphs on the GPU): both graphs take our tensors and options. Building plans needs a
    GPU; frontend 1.32 validates the graphs without one."""
    cudnn = pytest.importorskip("cudnn")
    shape = Shape(batch=32, heads=2, head_dim=64, tokens=1024, dtype=torch.bfloat16, device=0)
    for backward in (False, True):
        graph, tensors = cudnn_frontend._describe(shape, backward)
        assert set(tensors) >= {"q", "k", "v", "o", "stats", "offsets", "stats_offsets", "seq_len"}
        try:
            graph.validate()
            graph.build_operation_graph()
        except RuntimeError as exc:
            if "CUDA driver" not in str(exc):  # older frontends ask the driver even here
                raise
    assert cudnn is cudnn_frontend.frontend()
