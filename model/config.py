"""Model shapes: XVERSE-65B itself, a one-GPU proxy of it, and a tiny CPU model for tests."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.config import ConfigError

XVERSE_VOCAB = 100_534


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the decoder, named as in XVERSE-65B's public `config.json`."""

    vocab_size: int = XVERSE_VOCAB
    d_model: int = 8192
    n_layers: int = 80
    n_heads: int = 64
    d_ff: int = 22016
    max_seq_len: int = 16_384
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    # The output layer is padded to a multiple of this so its matmul and the logits' row stride stay
    # aligned for the tensor cores; the padded logits are sliced off before any softmax.
    vocab_multiple: int = 128

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "vocab_multiple"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"model head_dim ({self.head_dim}) must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def with_(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # XVERSE-65B (github.com/xverse-ai/XVERSE-65B config.json): 8192 wide, 64 heads of 128, 80 layers.
    "xverse-65b": ModelConfig(),
    # The same shape family scaled to one GPU: head_dim 128 and XVERSE's d_ff/d_model ratio (2.6875),
    # 1.22 B parameters with the full vocabulary.
    "proxy-1b": ModelConfig(d_model=2048, n_layers=16, n_heads=16, d_ff=5504),
    # For CPU tests and the demo: a few hundred thousand parameters besides the embeddings.
    "tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=172, max_seq_len=16_384),
}


def preset(name: str, **overrides) -> ModelConfig:
    """The named preset with fields replaced (typically `vocab_size` from the shards' manifest)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].with_(**overrides)
