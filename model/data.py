"""From packed shard rows to training batches: targets, loss masks and a deterministic order.

Kept apart from the model (which knows nothing about shards) and from the loop (which knows nothing
about how targets are masked), and importable without pyarrow or Ray: the GPU check builds its
synthetic batches through `collate` too.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from model.attention import DocumentLayout
from model.model import IGNORE_INDEX


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) int64
    labels: torch.Tensor  # (B, L) int64, IGNORE_INDEX where no target is trained
    layout: DocumentLayout

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device, non_blocking=True), self.labels.to(device, non_blocking=True),
                     self.layout.to(device))


def row_labels(input_ids: torch.Tensor, cu_seqlens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Next-token targets of one row, masked where the next token belongs to another document.

    Masked: the last token of every document (its successor starts the next document: after EOS
    nothing is predicted), any EOS, the row's last real token, and the padding tail.
    """
    n = input_ids.shape[0]
    labels = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
    labels[:-1] = input_ids[1:]
    cu = cu_seqlens.long()
    masked = torch.arange(n) >= cu[-1] - 1
    masked[cu[1:-1] - 1] = True
    masked |= input_ids == eos_id
    return labels.masked_fill(masked, IGNORE_INDEX)


def collate(rows: list[dict], eos_id: int) -> Batch:
    """Rows as the mixing reader yields them (`input_ids` LongTensor[L], `cu_seqlens` IntTensor)."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    seq_len = rows[0]["input_ids"].shape[0]
    if any(r["input_ids"].shape[0] != seq_len for r in rows):
        raise ValueError("all rows of a batch must have the same sequence length")
    input_ids = torch.stack([r["input_ids"].long() for r in rows])
    labels = torch.stack([row_labels(r["input_ids"].long(), r["cu_seqlens"], eos_id) for r in rows])
    return Batch(input_ids, labels, DocumentLayout.from_rows([r["cu_seqlens"] for r in rows], seq_len))


class BatchOrder:
    """Which rows of a rank's dataset make up step `s`'s batch: a pure function of (seed, s).

    Each epoch is a seeded permutation of the rows, so a run resumed at step s reads exactly the
    batches an uninterrupted run would have read.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int):
        if num_rows <= 0:
            raise ValueError("this rank has no rows to train on: fewer shard rows than ranks?")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed

    @functools.lru_cache(maxsize=2)
    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_rows, generator=gen).tolist()

    def indices(self, step: int) -> list[int]:
        first = step * self.batch_size
        return [self._permutation(s // self.num_rows)[s % self.num_rows] for s in range(first, first + self.batch_size)]
