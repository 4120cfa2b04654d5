"""The `cudnn_fe` backend's glue on CPU. cuDNN needs a GPU (bench/gpu_check.py runs it there), so these
tests stand a CPU double in for the built cuDNN graphs. The double reads its inputs as cuDNN's ragged
layout defines them: offsets in elements, per-document lengths, statistics (docs, heads, T) of which
each document uses its first positions. It checks what xdp adds around the graphs: the index tensors,
the buffers, the graph cache's shapes, autograd, torch.compile and the self-check."""
from __future__ import annotations

import pytest
import torch

from model import cudnn_frontend
from model.attention import DocumentLayout, attention_kernel, cudnn_self_check, select_backend
from model.cudnn_frontend import Shape, longest_bucket
from test_attention_cudnn import reference_grads, reference_logsumexp
from test_model_core import reference_attention


class CpuGraph:
    """A "built graph" for `shape` that computes on the CPU what cuDNN's graph computes on the GPU."""

    def __init__(self, shape: Shape, backward: bool):
        self.shape, self.backward = shape, backward

    def documents(self, values) -> list[int]:
        s = self.shape
        offsets, lengths = values["offsets"], values["seq_len"]
        assert offsets.shape == (s.docs + 1, 1, 1, 1) and lengths.shape == (s.docs, 1, 1, 1)  # the declared dims
        assert offsets.dtype == lengths.dtype == torch.int32
        offsets, lengths = offsets.flatten(), lengths.flatten()
        assert torch.equal(offsets % (s.heads * s.head_dim), torch.zeros_like(offsets))
        cu = (offsets // (s.heads * s.head_dim)).tolist()
        assert lengths.tolist() == [b - a for a, b in zip(cu, cu[1:])] and max(lengths) <= s.longest <= s.total
        return cu

    def run(self, values: dict[str, torch.Tensor], device) -> None:
        cu = self.documents(values)
        q, k, v = values["q"], values["k"], values["v"]
        assert values["stats"].shape == (self.shape.docs, self.shape.heads, self.shape.total)
        if not self.backward:
            values["o"].copy_(reference_attention(q, k, v, cu))
            for i, (a, b) in enumerate(zip(cu, cu[1:])):
                values["stats"][i, :, : b - a] = reference_logsumexp(q[a:b], k[a:b], [0, b - a]).t()
            return
        for i, (a, b) in enumerate(zip(cu, cu[1:])):  # the backward reads what the forward stored
            want = reference_logsumexp(q[a:b], k[a:b], [0, b - a]).t().float()
            torch.testing.assert_close(values["stats"][i, :, : b - a], want)
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


def test_longest_bucket_is_a_power_of_two_at_most_the_batch():
    assert [longest_bucket(n, 16_384) for n in (1, 64, 65, 1000, 4096, 4097, 16_384)] == \
        [64, 64, 128, 1024, 4096, 8192, 16_384]
    assert longest_bucket(10_000, 12_288) == 12_288  # 16,384 would pass the row


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
    assert {(s.docs, s.longest, s.total, backward) for s, backward in cpu_graphs} == {(4, 48, 48, False), (4, 48, 48, True)}


def test_compiled_model_on_cudnn_fe_trains_as_on_sdpa_docs_and_reuses_graphs(cpu_graphs):
    """Four batches of other documents: one Dynamo graph, the same losses and gradients as
    sdpa_docs, and a cuDNN graph per (documents, power-of-two longest) shape, not per batch."""
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
        step = compile_packed(model, backend="aot_eager") if backend == "cudnn_fe" else model
        losses = []
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
    # the first and last batches share the document count (3) and the longest bucket (64): one graph pair
    assert sorted({(s.docs, s.longest) for s, _ in cpu_graphs}) == [(2, 64), (3, 64), (5, 64)]


def test_cudnn_fe_self_check_passes_the_double_and_needs_the_frontend_on_cuda(cpu_graphs, monkeypatch):
    assert cudnn_self_check("cpu", "cudnn_fe") is None
    with pytest.raises(ValueError, match="not available on cpu"):
        select_backend("cpu", "cudnn_fe")


def test_cudnn_fe_graphs_describe_with_the_installed_frontend():
    """Where nvidia-cudnn-frontend is installed (not in CI): both graphs take our tensors and options.
    Building plans needs a GPU; frontend 1.32 validates the graphs without one."""
    cudnn = pytest.importorskip("cudnn")
    shape = Shape(docs=5, heads=2, head_dim=64, longest=256, total=512, dtype=torch.bfloat16, device=0)
    for backward in (False, True):
        graph, tensors = cudnn_frontend._describe(shape, backward)
        assert set(tensors) >= {"q", "k", "v", "o", "stats", "offsets", "seq_len"}
        try:
            graph.validate()
            graph.build_operation_graph()
        except RuntimeError as exc:
            if "CUDA driver" not in str(exc):  # older frontends ask the driver even here
                raise
    assert cudnn is cudnn_frontend.frontend()
