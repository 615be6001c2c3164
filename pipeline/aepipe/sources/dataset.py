"""Sources as Ray Datasets: a source's rows (any aepipe.sources.Source) in fixed row ranges, one
read task and one block each, so every row carries its global index (`row`) whichever worker reads
it and whatever order blocks finish in. The in-process engine reads the same blocks (read_block).

Re-exported from aepipe.sources; this module imports nothing of the package, so that the package
itself, which everything reading data imports, stays one step from the bottom.
"""

from __future__ import annotations

import numpy as np

ROWS_PER_TASK = 4096  # big enough to amortise a Ray task, small enough to stream


def read_block(src, start: int, stop: int) -> dict:
    """Rows [start, stop) as one block: row (global index), id and x. Ray Datasets and the
    in-process fit both read through this, so both see the same rows and the same split."""
    ids, x = src.read(start, stop)
    return {"row": np.arange(start, stop, dtype=np.int64), "id": ids, "x": x}


def to_dataset(src, rows_per_task: int = ROWS_PER_TASK):
    """A Ray Dataset with columns row (global index), id and x (float32, schema shape)."""
    import ray.data
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    def read(a, b):
        return [BlockAccessor.batch_to_block(read_block(src, a, b))]

    class RowRanges(Datasource):
        def estimate_inmemory_data_size(self):
            return src.n_rows * (src.schema.size * 4 + 16)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(lambda a=a, b=b: read(a, b),
                             BlockMetadata(num_rows=b - a, size_bytes=(b - a) * src.schema.size * 4,
                                           input_files=None, exec_stats=None))
                    for a, b in ranges]

    ranges = src.ranges(rows_per_task)
    # exactly one block per range: left to itself Ray splits small reads into more blocks, and
    # blocks that straddle Zarr chunks would send their rows through the driver
    return ray.data.read_datasource(RowRanges(), override_num_blocks=len(ranges))
