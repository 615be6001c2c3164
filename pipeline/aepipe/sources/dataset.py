"""Sources as Ray Datasets: a source's rows (any aepipe.sources.Source) in fixed row ranges, so
every row carries its global index (`row`) whichever worker reads it and whatever order blocks
finish in. The in-process engine reads the same blocks (read_block).

A task is a list of read steps (plan): its rows are read, run through the model and written one
step (one block) at a time, so a task can be as large as the part or shard it writes (tens of MiB
of codes) while it holds one step of input (tens of MiB of pixels) at once.

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


def plan(src, step_rows: int = ROWS_PER_TASK, part_rows: int | None = None) -> list[list[tuple[int, int]]]:
    """The source's read steps (its own ranges of about step_rows: whole row groups, whole chunks)
    grouped into tasks of part_rows rows. Task edges fall on multiples of part_rows (so on the
    output's chunk or shard edges, of which part_rows is a multiple: no two tasks share one); a step
    across an edge is cut there. part_rows None: one step per task."""
    steps = src.ranges(step_rows)
    if not part_rows:
        return [[s] for s in steps]
    tasks: list[list[tuple[int, int]]] = []
    for a, b in steps:
        while a < b:
            edge = min(b, (a // part_rows + 1) * part_rows)
            if not tasks or tasks[-1][-1][1] % part_rows == 0 or tasks[-1][-1][1] != a:
                tasks.append([])
            tasks[-1].append((a, edge))
            a = edge
    return tasks


def task_range(task: list[tuple[int, int]]) -> tuple[int, int]:
    return task[0][0], task[-1][1]


def to_dataset(src, rows_per_task: int = ROWS_PER_TASK, tasks: list | None = None):
    """A Ray Dataset with columns row (global index), id and x (float32, schema shape): one read
    task per task of `tasks` (default: one per range of rows_per_task), one block per step."""
    import ray.data
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    def read(steps):
        for a, b in steps:  # a generator: Ray Data streams each block on to the model and the write
            yield BlockAccessor.batch_to_block(read_block(src, a, b))

    class RowRanges(Datasource):
        def estimate_inmemory_data_size(self):  # of these tasks' rows (a job's wave may be a share of it)
            return sum(b - a for steps in tasks for a, b in steps) * (src.schema.size * 4 + 16)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(lambda steps=steps: read(steps),
                             BlockMetadata(num_rows=sum(b - a for a, b in steps),
                                           size_bytes=sum(b - a for a, b in steps) * src.schema.size * 4,
                                           input_files=None, exec_stats=None))
                    for steps in tasks]

    tasks = tasks or plan(src, rows_per_task)
    # exactly one read task per task: left to itself Ray splits small reads into more blocks, and
    # blocks that straddle Zarr chunks would send their rows through the driver
    return ray.data.read_datasource(RowRanges(), override_num_blocks=len(tasks))
