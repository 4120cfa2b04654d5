"""cuDNN's ragged attention through NVIDIA's cudnn-frontend, with graphs built once and kept.

torch 2.11's own ragged cuDNN path (the `cudnn` backend) builds its graph on every call, tens of
milliseconds each (see `attention.cudnn_self_check`). This module builds the same cuDNN SDPA graphs
with the `nvidia-cudnn-frontend` package and keeps them, describing every batch as TransformerEngine
does for packed (THD) sequences on cuDNN 9.6 and later:

- q, k, v and the output are the packed (T, heads, head_dim) tensors, described to cuDNN as
  (batch, heads, tokens, head_dim) with ragged offsets (where each document starts, in elements)
  and per-document lengths for the padding mask; causal is the top-left diagonal band;
- `batch` and `tokens` are buckets, not the batch's own counts: the documents padded with empty ones
  up to `batch_bucket`, and `tokens_bucket` of T. Every 16,384-token row with up to 32 documents
  then shares one forward and one backward graph, so the document layout, new at every step, never
  costs a graph build inside training;
- the softmax statistics the backward needs are ragged too, one fp32 value per (token, head), and
  the backward's fp32 accumulators are sized by the token bucket (`max_total_seq_len`), not by
  batch x tokens.

Wrapped in custom ops, like the `cudnn` backend, so `torch.compile` keeps the calls opaque.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from model.ragged_ops import register_ragged_autograd

# Ragged statistics and a backward workspace bounded by `max_total_seq_len` arrived in cuDNN 9.6.
MIN_CUDNN = 90600


@functools.cache
def frontend():
    """The `cudnn` module of nvidia-cudnn-frontend, or None when it is not installed."""
    try:
        import cudnn
    except (ImportError, OSError, RuntimeError):  # not installed, or no cuDNN library for it to load
        return None
    return cudnn if hasattr(cudnn, "pygraph") else None


def _bucket(n: int, smallest: int, largest_power: int) -> int:
    """`smallest` up to `smallest`, then the next power of two up to `largest_power`, then the next
    multiple of `largest_power`: TransformerEngine's buckets, so a run meets one or two values."""
    if n <= smallest:
        return smallest
    return 1 << (n - 1).bit_length() if n <= largest_power else -(-n // largest_power) * largest_power


def batch_bucket(docs: int) -> int:
    """The graph's batch for `docs` documents: 32, 64, ..., 512, then multiples of 512."""
    return _bucket(docs, 32, 512)


def tokens_bucket(tokens: int) -> int:
    """The graph's sequence extent for `tokens` packed tokens: 1,024, 2,048, ..., 32,768, then multiples
    of 32,768."""
    return _bucket(tokens, 1024, 32_768)


@dataclass(frozen=True)
class Shape:
    """What a cuDNN graph is built for: batches that share it reuse the graph."""

    batch: int  # batch_bucket of the documents
    heads: int
    head_dim: int
    tokens: int  # tokens_bucket of T
    dtype: torch.dtype
    device: int

    @classmethod
    def of(cls, q: torch.Tensor, cu_seqlens: torch.Tensor) -> "Shape":
        total, heads, head_dim = q.shape
        return cls(batch_bucket(len(cu_seqlens) - 1), heads, head_dim, tokens_bucket(total), q.dtype,
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
    b, h, s, d = shape.batch, shape.heads, shape.tokens, shape.head_dim
    packed = dict(dim=[b, h, s, d], stride=[s * h * d, d, h * d, 1], data_type=_io_type(shape.dtype))
    stats = dict(dim=[b, h, s, 1], stride=[h * s, 1, h, 1], data_type=cudnn.data_type.FLOAT)  # (T, heads)
    index = dict(dim=[b + 1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.INT64)
    t = {role: g.tensor(name=role, **index) for role in ("offsets", "stats_offsets")}
    t["seq_len"] = g.tensor(name="seq_len", dim=[b, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.INT32)

    def ragged(role: str, tensor, offsets: str = "offsets") -> None:
        tensor.set_ragged_offset(t[offsets])
        t[role] = tensor

    for role in ("q", "k", "v"):
        ragged(role, g.tensor(name=role, **packed))
    options = dict(attn_scale=1 / math.sqrt(d), use_padding_mask=True, seq_len_q=t["seq_len"], seq_len_kv=t["seq_len"],
                   diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT, diagonal_band_right_bound=0)
    if not backward:
        o, lse = g.sdpa(name="sdpa", q=t["q"], k=t["k"], v=t["v"], generate_stats=True, **options)
        ragged("o", o.set_output(True).set_dim(packed["dim"]).set_stride(packed["stride"]))
        lse.set_output(True).set_dim(stats["dim"]).set_stride(stats["stride"]).set_data_type(stats["data_type"])
        ragged("stats", lse, "stats_offsets")
        return g, t
    ragged("o", g.tensor(name="o", **packed))
    ragged("do", g.tensor(name="do", **packed))
    ragged("stats", g.tensor(name="stats", **stats), "stats_offsets")
    grads = g.sdpa_backward(name="sdpa_backward", q=t["q"], k=t["k"], v=t["v"], o=t["o"], dO=t["do"],
                            stats=t["stats"], max_total_seq_len_q=s, max_total_seq_len_kv=s, **options)
    for role, grad in zip(("dq", "dk", "dv"), grads):
        ragged(role, grad.set_output(True).set_dim(packed["dim"]).set_stride(packed["stride"]))
    return g, t


@functools.cache
def graph(shape: Shape, backward: bool) -> Graph:
    """The built graph for `shape`, built on first use and kept for the life of the process."""
    cudnn = frontend()
    if cudnn.backend_version() < MIN_CUDNN:
        raise RuntimeError(f"the cudnn_fe backend needs cuDNN 9.6 or later; this is {cudnn.backend_version_string()}")
    g, tensors = _describe(shape, backward, _handle(shape.device))
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return Graph(g, tensors, g.get_workspace_size())


def _index_values(cu_seqlens: torch.Tensor, shape: Shape) -> dict[str, torch.Tensor]:
    """The ragged offsets (in elements of the (T, heads, head_dim) tensors and of the (T, heads)
    statistics) and the documents' lengths, padded with empty documents up to the graph's batch."""
    cu = cu_seqlens.long()
    cu = torch.cat([cu, cu[-1:].expand(shape.batch + 1 - len(cu))])
    return {"offsets": (cu * (shape.heads * shape.head_dim)).view(-1, 1, 1, 1),  # as declared
            "stats_offsets": (cu * shape.heads).view(-1, 1, 1, 1),
            "seq_len": (cu[1:] - cu[:-1]).int().view(-1, 1, 1, 1)}


@torch.library.custom_op("xdp::cudnn_fe_attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
              max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, softmax statistics (T, heads) fp32). `max_seqlen` is unused: the graph's extent is the
    token bucket; it is in the signature that the ragged autograd shares with the `cudnn` ops."""
    q, k, v = (x.contiguous() for x in (q, k, v))
    shape = Shape.of(q, cu_seqlens)
    out = torch.empty_like(q)
    stats = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    graph(shape, backward=False).run({"q": q, "k": k, "v": v, "o": out, "stats": stats,
                                      **_index_values(cu_seqlens, shape)}, q.device)
    return out, stats


@attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


@torch.library.custom_op("xdp::cudnn_fe_attention_backward", mutates_args=())
def attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       stats: torch.Tensor, cu_seqlens: torch.Tensor,
                       max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = (x.contiguous() for x in (q, k, v))
    shape = Shape.of(q, cu_seqlens)
    dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
    values = {"q": q, "k": k, "v": v, "o": out, "do": grad_out.contiguous(), "stats": stats, "dq": dq, "dk": dk,
              "dv": dv, **_index_values(cu_seqlens, shape)}
    graph(shape, backward=True).run(values, q.device)
    return dq, dk, dv


@attention_backward.register_fake
def _(grad_out, q, k, v, out, stats, cu_seqlens, max_seqlen):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


register_ragged_autograd(attention, torch.ops.xdp.cudnn_fe_attention_backward)
