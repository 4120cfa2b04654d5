"""`ray_session`: the block size setting reaches Ray Data's reads and is undone afterwards."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import RayConfig
from pipeline.ray_session import _PARQUET_READ_UNIT, ray_session


def _blocks(ray, path) -> list[int]:
    return [b.num_rows for b in ray.data.read_parquet(str(path)).iter_batches(batch_format="pyarrow",
                                                                               batch_size=None)]


def test_block_mb_bounds_read_blocks_and_is_restored(ray_local, tmp_path):
    from ray.data import DataContext

    path = tmp_path / "docs.parquet"
    text = "x" * 10_000  # 10 KB per row, 8 MB in 800 rows, 100 per row group
    pq.write_table(pa.table({"text": [text] * 800}), path, row_group_size=100, compression="zstd")
    default_size = DataContext.get_current().target_max_block_size
    whole = _blocks(ray_local, path)
    with ray_session(RayConfig(block_mb=1)):
        assert DataContext.get_current().target_max_block_size == 2**20
        small = _blocks(ray_local, path)
    assert sum(whole) == sum(small) == 800
    assert max(whole) > 200 and max(small) <= 200  # 1 MiB units: at most two 1 MB row groups
    assert DataContext.get_current().target_max_block_size == default_size
    assert _PARQUET_READ_UNIT not in os.environ
