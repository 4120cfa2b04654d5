"""A decoder-only transformer in XVERSE-65B's shape, over packed documents.

As XVERSE-65B's public modeling code: pre-norm RMSNorm (eps 1e-6), rotary embeddings in the
rotate-half layout (base 10000), SwiGLU feed-forward, multi-head attention (no GQA), no biases,
untied input and output embeddings, normal(0, 0.02) initialisation. The batch arrives as packed rows
plus a `DocumentLayout`; rotary positions restart at every document and attention never crosses
one, so a packed row computes what its documents would compute alone. No parallelism lives here:
the training loop wraps this module with DDP or FSDP2.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import DocumentLayout, attention_kernel, check_backend
from model.config import ModelConfig

IGNORE_INDEX = -100

log = logging.getLogger(__name__)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as XVERSE does, then return to the activation dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotary_table(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos and sin of shape (length, head_dim) for positions 0..length-1, rotate-half layout
    (frequencies repeated twice)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate in fp32 and return x's dtype: the attention kernels need q, k, v in one (bf16) dtype."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: str):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.attend = attention_kernel(backend)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layout: DocumentLayout) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(t, self.n_heads, self.head_dim)
        v = self.v_proj(x).view(t, self.n_heads, self.head_dim)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return self.o_proj(self.attend(q, k, v, layout).reshape(t, -1))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: str):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, backend)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, rope, layout):
        x = x + self.self_attn(self.input_layernorm(x), rope, layout)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """The decoder. `backend` names the attention kernel (see `model.attention`).

    `loss_chunk`: compute the output layer and the loss this many tokens at a time, recomputing each
    chunk's logits in the backward. Caps logit memory at loss_chunk x vocab instead of rows x L x vocab
    (16,384 x 32,000 fp32 logits and their gradients are ~8 GB) for one extra output-layer forward.
    0 computes all logits at once (fastest where memory allows, as on a GPU).
    """

    def __init__(self, cfg: ModelConfig, backend: str = "sdpa_docs", loss_chunk: int = 0):
        super().__init__()
        if loss_chunk < 0:
            raise ValueError(f"loss_chunk must be >= 0, got {loss_chunk}")
        self.cfg, self.loss_chunk = cfg, loss_chunk
        log.info("attention backend: %s", check_backend(backend))
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, backend) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        # Rotary cos/sin per in-document position, looked up per token. Computed inside the compiled
        # step instead, inductor re-derived pow/cos/sin in every layer's q/k kernel (4.5 % of a proxy-1b
        # step on an H200). Not persistent: a function of the config, so never checkpointed.
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, cfg.head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, cfg.head_dim), persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        """normal(0, init_std) for every matrix, ones for the norms, the rotary table (also after `to_empty`)."""
        cos, sin = rotary_table(self.cfg.max_seq_len, self.cfg.head_dim, self.cfg.rope_base)
        with torch.no_grad():
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, input_ids: torch.Tensor, layout: DocumentLayout, labels: torch.Tensor | None = None):
        """input_ids (B, L) -> logits (B, L, vocab_size), or the mean loss over unmasked `labels`."""
        b, n = input_ids.shape
        if n > self.cfg.max_seq_len:
            raise ValueError(f"rows of {n} tokens exceed the model's context of {self.cfg.max_seq_len}")
        x = self.embed_tokens(input_ids.reshape(-1))
        rope = self.rope_cos[layout.positions][:, None, :], self.rope_sin[layout.positions][:, None, :]
        for layer in self.layers:
            x = layer(x, rope, layout)
        x = self.norm(x)
        if labels is None:
            return self.logits(x).view(b, n, -1)
        labels = labels.reshape(-1)
        if not self.loss_chunk:
            total = self._loss_sum(x, labels)
        else:
            total = sum(checkpoint(self._loss_sum, x[i:i + self.loss_chunk], labels[i:i + self.loss_chunk],
                                   use_reentrant=False) for i in range(0, x.shape[0], self.loss_chunk))
        # A batch without targets (all masked) has loss 0, not cross_entropy's NaN mean: it must not
        # poison the gradients of the other micro-batches of its step.
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)[:, : self.cfg.vocab_size]  # padded logits never take part

    def _loss_sum(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed_tokens.weight.numel() if exclude_embedding else n

    def training_flops(self, layout: DocumentLayout) -> float:
        """FLOPs of one training step (forward + backward) over a batch with this layout.

        Matmuls: 6 per parameter per token (the input embedding is a lookup, so excluded; the output
        layer counts at its padded width). Attention: QK^T and AV are 2 * 2 * d_model FLOPs per
        (query, key) pair in the forward, times 3 with the backward, over the causal pairs within
        each document only, which is what the varlen kernels compute.
        """
        dense = 6 * self.num_params(exclude_embedding=True) * layout.boundaries[-1]
        return dense + 12 * self.cfg.n_layers * self.cfg.d_model * layout.causal_pairs()
