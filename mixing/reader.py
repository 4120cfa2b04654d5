"""PyTorch datasets over a shard directory (see `mixing.shards` for the layout).

Partitioning is by contiguous block of the global sequence index: rank r of W owns sequences
[r*N//W, (r+1)*N//W), so every sequence is read by exactly one rank, ranks differ by at most one
sequence, and each rank touches only its own shards. Shards were shuffled across buckets when they
were written, so a contiguous block carries the mix. Checksums are verified once per shard and
process, when the shard is first opened, so start-up stays cheap on large directories; call
`verify_all()` to check everything up front.
"""
from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from mixing.shards import ShardError, check_present, read_manifest, verify_shard

_OPEN_FILES = 8  # open shard files per process (bounded for directories of thousands of shards)
_CACHED_ROW_GROUPS = 16  # decoded row groups kept per process (16 x 8 rows x 64 KiB at L=16K)


class _ShardIndex:
    """Maps a global sequence index to (shard, row) and reads rows one row group at a time."""

    def __init__(self, shard_dir: str | os.PathLike, verify: bool):
        self.dir = Path(shard_dir)
        self.manifest = read_manifest(self.dir)
        self.sequence_length = int(self.manifest["sequence_length"])
        self.shards = self.manifest["shards"]
        self.starts = np.concatenate([[0], np.cumsum([s["sequences"] for s in self.shards])]).astype(np.int64)
        self.verify = verify
        check_present(self.dir, self.manifest)
        self._verified: set[int] = set()
        self._files: OrderedDict = OrderedDict()  # shard -> (ParquetFile, row-group starts), a few open
        self._groups: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):  # open files and caches stay in the process that made them
        state = dict(self.__dict__)
        state["_files"], state["_groups"], state["_verified"] = OrderedDict(), OrderedDict(), set()
        return state

    def verify_shard(self, i: int) -> None:
        verify_shard(self.dir, self.shards[i])

    def _open(self, i: int) -> tuple[pq.ParquetFile, np.ndarray]:
        if i in self._files:
            self._files.move_to_end(i)
        else:
            path = self.dir / self.shards[i]["file"]
            if self.verify and i not in self._verified:
                self.verify_shard(i)
                self._verified.add(i)
            try:
                pf = pq.ParquetFile(path)
            except Exception as exc:  # pyarrow raises several types for a damaged footer
                raise ShardError(f"{path}: cannot read Parquet: {exc}") from exc
            field = pf.schema_arrow.field("input_ids") if "input_ids" in pf.schema_arrow.names else None
            if field is None or getattr(field.type, "list_size", None) != self.sequence_length:
                raise ShardError(f"{path}: input_ids is not fixed_size_list[{self.sequence_length}]")
            if pf.metadata.num_rows != self.shards[i]["sequences"]:
                raise ShardError(f"{path}: {pf.metadata.num_rows} rows, manifest says {self.shards[i]['sequences']}")
            group_starts = np.concatenate(
                [[0], np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])])
            self._files[i] = (pf, group_starts)
            if len(self._files) > _OPEN_FILES:
                self._files.popitem(last=False)
        return self._files[i]

    def _row_group(self, shard: int, group: int):
        key = (shard, group)
        if key not in self._groups:
            pf, _ = self._open(shard)
            table = pf.read_row_group(group, columns=["input_ids", "cu_seqlens"])
            ids = table.column("input_ids").combine_chunks()
            cu = table.column("cu_seqlens").combine_chunks()
            rows = ids.values.to_numpy(zero_copy_only=False).reshape(len(ids), self.sequence_length)
            vocab = self.manifest.get("vocab_size")
            if vocab is not None and rows.size and int(rows.max()) >= vocab:  # an embedding lookup would fail
                raise ShardError(f"{self.dir / self.shards[shard]['file']}: token id {int(rows.max())} is outside "
                                 f"the manifest's vocab_size {vocab}")
            offsets, bounds = cu.offsets.to_numpy(), cu.values.to_numpy(zero_copy_only=False)
            bad = _bad_layout(offsets, bounds, self.sequence_length)
            if bad is not None:
                raise ShardError(f"{self.dir / self.shards[shard]['file']}: row {bad} of row group {group}: "
                                 f"cu_seqlens {bounds[offsets[bad]:offsets[bad + 1]][:8].tolist()} must start at 0, "
                                 f"rise strictly and end at most at the sequence length {self.sequence_length}")
            self._groups[key] = (rows, offsets, bounds)
            if len(self._groups) > _CACHED_ROW_GROUPS:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return self._groups[key]

    def item(self, index: int) -> dict[str, torch.Tensor]:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        row = index - int(self.starts[shard])
        _, group_starts = self._open(shard)
        group = bisect.bisect_right(group_starts, row) - 1
        rows, cu_offsets, cu_values = self._row_group(shard, group)
        r = row - int(group_starts[group])
        return {
            "input_ids": torch.from_numpy(rows[r].astype(np.int64)),
            "cu_seqlens": torch.from_numpy(cu_values[cu_offsets[r]:cu_offsets[r + 1]].astype(np.int32)),
        }


def _bad_layout(offsets: np.ndarray, bounds: np.ndarray, sequence_length: int):
    """The first row whose document bounds cannot describe a packed row, or None (vectorized)."""
    starts, ends = offsets[:-1], offsets[1:]
    ok = ends - starts >= 2
    ok[ok] &= (bounds[starts[ok]] == 0) & (bounds[ends[ok] - 1] <= sequence_length)
    rises = np.diff(bounds.astype(np.int64)) > 0
    rises[ends[:-1][ends[:-1] > 0] - 1] = True  # from one row's last bound to the next row's first
    falls = np.flatnonzero(~rises)
    ok[np.searchsorted(ends, falls, side="right")] = False  # the row holding each fall
    return int(np.flatnonzero(~ok)[0]) if not ok.all() else None


def _partition(n: int, rank: int, world_size: int) -> tuple[int, int]:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return n * rank // world_size, n * (rank + 1) // world_size


class PackedShards(Dataset):
    """Map-style dataset of packed sequences: `{"input_ids": LongTensor[L], "cu_seqlens": IntTensor[k+1]}`.

    Index i of rank r is global sequence `r*N//W + i` (see the module docstring).
    """

    def __init__(self, shard_dir: str | os.PathLike, rank: int = 0, world_size: int = 1, verify: bool = True):
        self._index = _ShardIndex(shard_dir, verify)
        self.lo, self.hi = _partition(len(self._index), rank, world_size)
        self.manifest = self._index.manifest
        self.sequence_length = self._index.sequence_length

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} sequences")
        return self._index.item(self.lo + i)

    def verify_all(self) -> None:
        """Check every shard's sha256 now (not only this rank's), raising ShardError naming the file."""
        for i in range(len(self._index.shards)):
            self._index.verify_shard(i)


class IterablePackedShards(IterableDataset):
    """Streaming dataset over this rank's block, split again across DataLoader workers.

    With `seed`, the order is shuffled deterministically per epoch (`set_epoch`): blocks of
    `block` consecutive sequences are visited in random order and shuffled inside, which keeps
    reads within a few row groups at a time.
    """

    def __init__(self, shard_dir: str | os.PathLike, rank: int = 0, world_size: int = 1,
                 seed: Optional[int] = None, verify: bool = True, block: int = 64):
        self._index = _ShardIndex(shard_dir, verify)
        self.lo, self.hi = _partition(len(self._index), rank, world_size)
        self.manifest = self._index.manifest
        self.sequence_length = self._index.sequence_length
        self.seed = seed
        self.block = block
        # In shared memory: DataLoader workers with persistent_workers=True keep the copy of the dataset
        # they started with, and must still see each set_epoch.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.hi - self.lo

    def _order(self) -> np.ndarray:
        info = get_worker_info()
        lo, hi = self.lo, self.hi
        if info is not None:
            n = hi - lo
            lo, hi = lo + n * info.id // info.num_workers, lo + n * (info.id + 1) // info.num_workers
        order = np.arange(lo, hi, dtype=np.int64)
        if self.seed is None or order.size == 0:
            return order
        rng = np.random.default_rng([self.seed, self.epoch, lo])
        blocks = np.array_split(order, max(1, -(-order.size // self.block)))
        return np.concatenate([rng.permutation(blocks[b]) for b in rng.permutation(len(blocks))])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in self._order():
            yield self._index.item(int(index))
