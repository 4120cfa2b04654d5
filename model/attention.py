"""Causal attention over packed documents, with the kernel chosen at run time.

Every backend computes the same function: a token attends to the earlier tokens of its own document
only (`cu_seqlens` marks where documents start), so packing several documents into one row trains
exactly as if each had its own row. Backends, best first:

- ``flash``: `flash_attn.flash_attn_varlen_func` (the flash-attn package, CUDA);
- ``varlen``: PyTorch's `torch.nn.attention.varlen.varlen_attn` (FlashAttention kernels, CUDA only);
- ``cudnn``: cuDNN's ragged SDPA, the kernel behind PyTorch's nested-tensor attention (CUDA only; a
  Hopper-tuned kernel where FlashAttention-2 is not). Never picked by "auto": it runs only on request,
  after a self-check on the device (`select_backend`);
- ``cudnn_fe``: the same cuDNN kernels through nvidia-cudnn-frontend, graphs built once per shape by
  `model.cudnn_frontend` (for torch versions whose own ragged path rebuilds its graph on every
  call); on request and self-checked, like ``cudnn``;
- ``sdpa_mask``: `scaled_dot_product_attention` with a block-diagonal causal mask (any device);
- ``sdpa_docs``: `scaled_dot_product_attention` once per document (any device; memory grows with
  the longest document rather than with the row, so it suits long rows on CPU).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from model import cudnn_frontend
from model.ragged_ops import register_ragged_autograd

BACKENDS = ("flash", "varlen", "cudnn", "cudnn_fe", "sdpa_mask", "sdpa_docs")
SELF_CHECKED = ("cudnn", "cudnn_fe")  # backends select_backend allows only after cudnn_self_check


@dataclass
class DocumentLayout:
    """Document boundaries of a batch of `batch_size` packed rows of `seq_len` tokens, flattened.

    `cu_seqlens` (int32) indexes the flattened batch of T = batch_size * seq_len tokens; a row's
    padding tail is a segment of its own, so no real token attends to padding. `boundaries` keeps a
    host copy (the per-document backend slices with it, and the varlen kernels need `max_seqlen` on
    the host). `positions` restarts at 0 at every document, for the rotary embeddings.
    """

    cu_seqlens: torch.Tensor
    boundaries: tuple[int, ...]
    positions: torch.Tensor
    max_seqlen: int
    batch_size: int
    seq_len: int

    @classmethod
    def from_rows(cls, row_cu_seqlens: list[torch.Tensor], seq_len: int) -> "DocumentLayout":
        """Build from each row's own `cu_seqlens` (0, ends of documents..., number of real tokens)."""
        bounds = [0]
        for r, cu in enumerate(row_cu_seqlens):
            cu = [int(x) for x in cu]
            if not cu or cu[0] != 0 or any(b <= a for a, b in zip(cu, cu[1:])) or cu[-1] > seq_len:
                raise ValueError(f"row {r}: cu_seqlens must rise strictly from 0 to at most {seq_len}, got {cu}")
            offset = r * seq_len
            bounds.extend(offset + c for c in cu[1:])
            if cu[-1] < seq_len:  # the padding tail
                bounds.append(offset + seq_len)
        lengths = torch.tensor([b - a for a, b in zip(bounds, bounds[1:])])
        starts = torch.repeat_interleave(torch.tensor(bounds[:-1]), lengths)
        positions = torch.arange(bounds[-1]) - starts
        return cls(
            cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
            boundaries=tuple(bounds),
            positions=positions,
            max_seqlen=int(lengths.max()),
            batch_size=len(row_cu_seqlens),
            seq_len=seq_len,
        )

    def to(self, device: torch.device | str) -> "DocumentLayout":
        return dataclasses.replace(self, cu_seqlens=self.cu_seqlens.to(device, non_blocking=True),
                                   positions=self.positions.to(device, non_blocking=True))

    def causal_pairs(self) -> int:
        """(query, key) pairs the causal in-document attention computes: n(n+1)/2 per segment."""
        bounds = self.boundaries
        return sum((b - a) * (b - a + 1) // 2 for a, b in zip(bounds, bounds[1:]))

    def segment_ids(self) -> torch.Tensor:
        """(batch_size, seq_len) index of each token's segment: equal ids may attend to each other."""
        lengths = self.cu_seqlens[1:] - self.cu_seqlens[:-1]
        ids = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths.long(),
                                      output_size=self.batch_size * self.seq_len)
        return ids.view(self.batch_size, self.seq_len)


def available_backends(device: torch.device | str) -> list[str]:
    """The backends that can run on `device`, best first."""
    device = torch.device(device)
    found = []
    if device.type == "cuda":
        if _flash_attn_varlen() is not None:
            found.append("flash")
        if _torch_varlen() is not None:
            found.append("varlen")
        if _cudnn_ragged_installed():
            found.append("cudnn")
        if cudnn_frontend.frontend() is not None:
            found.append("cudnn_fe")
    return found + ["sdpa_mask", "sdpa_docs"]


def select_backend(device: torch.device | str, requested: str = "auto") -> str:
    """`requested` if it can run on `device` (error otherwise); for "auto" the best available."""
    available = available_backends(device)
    if requested == "auto":
        # Without a varlen kernel, the per-document loop: the mask costs O(rows * seq_len^2) memory.
        return available[0] if available[0] in ("flash", "varlen") else "sdpa_docs"
    if check_backend(requested) not in available:
        raise ValueError(f"attention backend {requested!r} is not available on {device} (have: {', '.join(available)})")
    if requested in SELF_CHECKED and (problem := cudnn_self_check(str(torch.device(device)), requested)):
        raise ValueError(f"attention backend {requested!r} failed its self-check on {device}: {problem}")
    return requested


def check_backend(name: str) -> str:
    """`name` if it names a backend, else a ValueError listing them."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def attention_kernel(backend: str) -> Callable[..., torch.Tensor]:
    """Causal attention within documents for `backend`: kernel(q, k, v, layout), (T, heads, head_dim) each.

    The library lookup (a cached import and a signature check) happens here, once, when the model is
    built, so the forward that torch.compile traces holds only the kernel call.
    """
    if check_backend(backend) not in _LIBRARY:
        return _KERNELS[backend]
    fn = _LIBRARY[backend]()
    if fn is None:
        raise ValueError(f"attention backend {backend!r} is not installed")
    return functools.partial(_KERNELS[backend], fn)


@functools.cache
def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.cache
def _torch_varlen():
    """`varlen_attn` made causal: torch 2.10 took `is_causal`, 2.11+ take `window_size=(-1, 0)`."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    if "window_size" in inspect.signature(varlen_attn).parameters:
        return functools.partial(varlen_attn, window_size=(-1, 0))
    return functools.partial(varlen_attn, is_causal=True)


def _flash(flash_attn_varlen_func, q, k, v, layout):
    cu = layout.cu_seqlens
    return flash_attn_varlen_func(q, k, v, cu, cu, layout.max_seqlen, layout.max_seqlen, causal=True)


def _varlen(causal_varlen_attn, q, k, v, layout):
    cu = layout.cu_seqlens
    return causal_varlen_attn(q, k, v, cu, cu, layout.max_seqlen, layout.max_seqlen)


def _sdpa_mask(q, k, v, layout):
    b, n, (_, h, d) = layout.batch_size, layout.seq_len, q.shape
    seg = layout.segment_ids()
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal  # (b, n, n)
    q, k, v = (x.view(b, n, h, d).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    return out.transpose(1, 2).reshape(b * n, h, d)


def _sdpa_docs(q, k, v, layout):
    outs = []
    for start, end in zip(layout.boundaries, layout.boundaries[1:]):
        qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))  # (h, len, d)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1))
    return torch.cat(outs)


def _cudnn(q, k, v, layout):
    return torch.ops.xdp.cudnn_attention(q, k, v, layout.cu_seqlens, layout.max_seqlen)[0]


def _cudnn_fe(q, k, v, layout):
    return torch.ops.xdp.cudnn_fe_attention(q, k, v, layout.cu_seqlens, layout.max_seqlen)[0]


# cuDNN's ragged attention, called on the packed (T, heads, head_dim) tensors with cu_seqlens as the
# ragged offsets. The aten ops have no meta kernels, so each is wrapped in a custom op: torch.compile
# keeps it opaque and autograd reaches cuDNN's own backward. The op's logsumexp layout has changed
# between torch versions ((T, heads, 1), later (heads, T)), so it travels flat and the backward views
# it in the shape the forward produced. Both ops have the same schema in torch 2.11 and 2.13, and
# torch 2.11's own `varlen_attn` makes this forward call in a cuDNN path it keeps switched off: one
# more reason for the self-check.
_CUDNN_LSE_SHAPES: dict[tuple[int, int], torch.Size] = {}


def _cudnn_ragged_installed() -> bool:
    return torch.backends.cudnn.is_available() and hasattr(torch.ops.aten, "_cudnn_attention_forward")


@torch.library.custom_op("xdp::cudnn_attention", mutates_args=())
def _cudnn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = torch.ops.aten._cudnn_attention_forward(
        q, k, v, None, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, True, 0.0, True, False)[:2]
    _CUDNN_LSE_SHAPES[(q.shape[0], q.shape[1])] = lse.shape
    return out, lse.reshape(-1)


@_cudnn_attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen):
    return torch.empty_like(q), q.new_empty(q.shape[0] * q.shape[1], dtype=torch.float32)


@torch.library.custom_op("xdp::cudnn_attention_backward", mutates_args=())
def _cudnn_attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor, cu_seqlens: torch.Tensor,
                              max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    unused = torch.empty(0, dtype=torch.int64, device=q.device)  # dropout's seed and offset: no dropout here
    dq, dk, dv = torch.ops.aten._cudnn_attention_backward(
        grad_out.contiguous(), q, k, v, out, lse.view(_CUDNN_LSE_SHAPES[(q.shape[0], q.shape[1])]), unused, unused,
        None, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, 0.0, True)
    return dq, dk, dv


@_cudnn_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


register_ragged_autograd(_cudnn_attention, torch.ops.xdp.cudnn_attention_backward)


# A cached cuDNN graph runs the self-check's 512-token row in well under a millisecond of host time;
# building one takes tens of milliseconds (42-51 ms per call in pytorch/pytorch#191576).
GRAPH_BUILD_SECONDS = 0.01


def _repeat_call_seconds(call: Callable[[], object], device: str) -> float:
    """Wall seconds of the fastest of three repeats of `call` (after a first call, which may set up)."""
    def seconds() -> float:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    seconds()
    return min(seconds() for _ in range(3))


def _builds_graphs(device: str) -> bool:
    """Whether cuDNN on `device` builds execution graphs (CUDA does; the tests' CPU kernels do not)."""
    return torch.device(device).type == "cuda"


@functools.cache
def cudnn_self_check(device: str, backend: str = "cudnn") -> str | None:
    """None if cuDNN's ragged attention (`backend`: "cudnn" or "cudnn_fe") gives per-document attention
    and gradients on `device`, fast enough to train with, else why not.

    Its nested-tensor path is younger than the FlashAttention ones, so it proves itself on a small
    layout (bf16, documents longer than a head, a padding tail) against `sdpa_docs` in fp32 before any
    model uses it, and on CUDA shows that repeated calls reuse their graph.
    """
    layout = DocumentLayout.from_rows([torch.tensor([0, 150, 420, 500], dtype=torch.int32)], 512).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, grad = (torch.randn(512, 2, 64, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(4))
    results = []
    try:
        for kernel, dtype in ((_KERNELS[backend], torch.bfloat16), (_sdpa_docs, torch.float32)):
            inputs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
            out = kernel(*inputs, layout)
            out.backward(grad.to(dtype))
            results.append([out.detach()] + [x.grad for x in inputs])
    except Exception as exc:  # no kernel for this device, shape or cuDNN version
        return f"{type(exc).__name__}: {exc}"
    for name, got, want in zip(("output", "dq", "dk", "dv"), *results):
        err = float((got.float() - want).norm() / want.norm())
        if not err < 2e-2:  # bf16 operands land near 1e-3..1e-2; NaN fails too
            return f"{name} differs from the per-document reference (relative error {err:.3g})"
    if not _builds_graphs(device):
        return None
    # In torch 2.11 the ragged path looked its graph up in a cache it never filled, so every call built
    # the graph anew: 32 builds per proxy-1b step (16 layers, forward and backward), over a second of host
    # time. pytorch/pytorch#191576 fixed it, in the same change that gave varlen_attn `block_table`.
    with torch.no_grad():
        per_call = _repeat_call_seconds(lambda: _KERNELS[backend](q, k, v, layout), device)
    if per_call > GRAPH_BUILD_SECONDS:
        why = ("this torch builds cuDNN's graph anew on every call (fixed by pytorch/pytorch#191576, in torch "
               "releases whose varlen_attn takes block_table); use --attention cudnn_fe or varlen"
               if backend == "cudnn" else "its cuDNN graph is not being reused")
        return f"each call takes {per_call * 1e3:.0f} ms even for a 512-token row: {why}"
    return None


_KERNELS = {"flash": _flash, "varlen": _varlen, "cudnn": _cudnn, "cudnn_fe": _cudnn_fe, "sdpa_mask": _sdpa_mask,
            "sdpa_docs": _sdpa_docs}
_LIBRARY = {"flash": _flash_attn_varlen, "varlen": _torch_varlen}  # kernels that take their library function first
