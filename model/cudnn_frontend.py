"""cuDNN's ragged attention through NVIDIA's cudnn-frontend, with graphs built once per shape.

torch 2.11's own ragged cuDNN path (the `cudnn` backend) builds its graph on every call, tens of
milliseconds each (see `attention.cudnn_self_check`). This module builds the same cuDNN SDPA graphs
with the `nvidia-cudnn-frontend` package and keeps them: one forward and one backward graph per
(documents, longest document rounded up to a power of two) and tensor shape, so a training run builds
a few dozen graphs in all instead of 32 per step.

Layout: q, k, v and the output are the packed (T, heads, head_dim) tensors, described to cuDNN as
(documents, heads, longest, head_dim) with ragged offsets (`cu_seqlens` x heads x head_dim elements)
and per-document lengths for the padding mask; causal is the top-left diagonal band. The softmax
statistics the backward needs are dense, (documents, heads, T) fp32: a document's rows hold its
positions first (the graph declares `longest` of them; the rest is never read). Wrapped in custom
ops, like the `cudnn` backend, so `torch.compile` keeps the calls opaque.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from model.ragged_ops import register_ragged_autograd


@functools.cache
def frontend():
    """The `cudnn` module of nvidia-cudnn-frontend, or None when it is not installed."""
    try:
        import cudnn
    except (ImportError, OSError, RuntimeError):  # not installed, or no cuDNN library for it to load
        return None
    return cudnn if hasattr(cudnn, "pygraph") else None


def longest_bucket(max_seqlen: int, total: int) -> int:
    """The graph's sequence extent for a batch whose longest document has `max_seqlen` tokens: the next
    power of two (so a run meets a handful of extents), at most the `total` tokens of the batch."""
    return min(1 << max(6, (max_seqlen - 1).bit_length()), total)


@dataclass(frozen=True)
class Shape:
    """What a cuDNN graph is built for: batches that share it reuse the graph."""

    docs: int
    heads: int
    head_dim: int
    longest: int  # longest_bucket of the batch
    total: int  # T, the packed tokens (the statistics' row length)
    dtype: torch.dtype
    device: int

    @classmethod
    def of(cls, q: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> "Shape":
        total, heads, head_dim = q.shape
        return cls(len(cu_seqlens) - 1, heads, head_dim, longest_bucket(max_seqlen, total), total, q.dtype,
                   q.device.index or 0)


@dataclass
class Graph:
    """A built cuDNN graph and its tensors by role ("q", "offsets", "seq_len", "o", "stats", ...)."""

    graph: object
    tensors: dict
    workspace_bytes: int

    def run(self, values: dict[str, torch.Tensor], device: torch.device) -> None:
        cudnn = frontend()
        handle = _handle(device.index or 0)
        cudnn.set_stream(handle, torch.cuda.current_stream(device).cuda_stream)
        workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=device)
        self.graph.execute({self.tensors[role]: value for role, value in values.items()}, workspace, handle=handle)


@functools.cache
def _handle(device: int):
    with torch.cuda.device(device):
        return frontend().create_handle()


def _io_type(dtype: torch.dtype):
    cudnn = frontend()
    return {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}[dtype]


def _describe(shape: Shape, backward: bool, handle=None):
    """The cuDNN graph for `shape` and its tensors by role, not yet built into plans (`handle`: the
    device's cuDNN handle; describing needs none)."""
    cudnn = frontend()
    g = cudnn.pygraph(io_data_type=_io_type(shape.dtype), intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    b, h, s, d = shape.docs, shape.heads, shape.longest, shape.head_dim
    packed = dict(dim=[b, h, s, d], stride=[s * h * d, d, h * d, 1], data_type=_io_type(shape.dtype))
    index = dict(dim=[b + 1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.INT32)
    lengths = dict(dim=[b, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.INT32)
    t = {"offsets": g.tensor(name="offsets", **index), "seq_len": g.tensor(name="seq_len", **lengths)}

    def ragged(role: str, tensor) -> None:
        tensor.set_ragged_offset(t["offsets"])
        t[role] = tensor

    for role in ("q", "k", "v"):
        ragged(role, g.tensor(name=role, **packed))
    stats = dict(dim=[b, h, s, 1], stride=[h * shape.total, shape.total, 1, 1], data_type=cudnn.data_type.FLOAT)
    options = dict(attn_scale=1 / math.sqrt(d), use_padding_mask=True, seq_len_q=t["seq_len"], seq_len_kv=t["seq_len"],
                   diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT, diagonal_band_right_bound=0)
    if not backward:
        o, t["stats"] = g.sdpa(name="sdpa", q=t["q"], k=t["k"], v=t["v"], generate_stats=True, **options)
        ragged("o", o.set_output(True).set_dim(packed["dim"]).set_stride(packed["stride"]))
        t["stats"].set_output(True).set_dim(stats["dim"]).set_stride(stats["stride"]).set_data_type(stats["data_type"])
        return g, t
    ragged("o", g.tensor(name="o", **packed))
    ragged("do", g.tensor(name="do", **packed))
    t["stats"] = g.tensor(name="stats", **stats)
    grads = g.sdpa_backward(name="sdpa_backward", q=t["q"], k=t["k"], v=t["v"], o=t["o"], dO=t["do"],
                            stats=t["stats"], **options)
    for role, grad in zip(("dq", "dk", "dv"), grads):
        ragged(role, grad.set_output(True).set_dim(packed["dim"]).set_stride(packed["stride"]))
    return g, t


@functools.cache
def graph(shape: Shape, backward: bool) -> Graph:
    """The built graph for `shape`, built on first use and kept for the life of the process."""
    cudnn = frontend()
    g, tensors = _describe(shape, backward, _handle(shape.device))
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return Graph(g, tensors, g.get_workspace_size())


def _index_values(cu_seqlens: torch.Tensor, heads: int, head_dim: int) -> dict[str, torch.Tensor]:
    """Ragged offsets in elements of a (T, heads, head_dim) tensor, and the documents' lengths."""
    cu = cu_seqlens.to(torch.int32)
    lengths = (cu[1:] - cu[:-1]).contiguous()
    return {"offsets": (cu * (heads * head_dim)).view(-1, 1, 1, 1), "seq_len": lengths.view(-1, 1, 1, 1)}  # as declared


@torch.library.custom_op("xdp::cudnn_fe_attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
              max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (x.contiguous() for x in (q, k, v))
    shape = Shape.of(q, cu_seqlens, max_seqlen)
    out = torch.empty_like(q)
    stats = torch.empty(shape.docs, shape.heads, shape.total, dtype=torch.float32, device=q.device)
    values = {"q": q, "k": k, "v": v, "o": out, "stats": stats, **_index_values(cu_seqlens, shape.heads, shape.head_dim)}
    graph(shape, backward=False).run(values, q.device)
    return out, stats


@attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen):
    return torch.empty_like(q), q.new_empty(cu_seqlens.shape[0] - 1, q.shape[1], q.shape[0], dtype=torch.float32)


@torch.library.custom_op("xdp::cudnn_fe_attention_backward", mutates_args=())
def attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       stats: torch.Tensor, cu_seqlens: torch.Tensor,
                       max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = (x.contiguous() for x in (q, k, v))
    shape = Shape.of(q, cu_seqlens, max_seqlen)
    dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
    values = {"q": q, "k": k, "v": v, "o": out, "do": grad_out.contiguous(), "stats": stats, "dq": dq, "dk": dk,
              "dv": dv, **_index_values(cu_seqlens, shape.heads, shape.head_dim)}
    graph(shape, backward=True).run(values, q.device)
    return dq, dk, dv


@attention_backward.register_fake
def _(grad_out, q, k, v, out, stats, cu_seqlens, max_seqlen):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


register_ragged_autograd(attention, torch.ops.xdp.cudnn_fe_attention_backward)
