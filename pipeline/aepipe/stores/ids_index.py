"""An index of a Zarr store's ids, so that `decode --ids` finds a few rows of a large store by
reading a few small chunks, whatever order its ids are in.

Ids written in order (row indices, an image folder's sorted paths) need none: the ids array itself
is bisected. Ids that are not (a table's own id column) get, at the store's commit, the subgroup
`ids_index`: the ids sorted (array `ids`) beside the row each sits in (`rows`), chunked small. A
lookup bisects the sorted ids (about log2(N / 65,536) + 1 chunk reads) and reads one chunk of rows.
xarray, which opens the root group, does not see it.

The index is sorted in the committing process's memory, so a store of more ids than
MAX_INDEX_BYTES allows gets none, and `decode --ids` scans its ids (as for stores written before).
Parquet stores get none: any file in the folder, whatever its name, is read as data by polars; a
lookup there skips the row groups whose id statistics rule the ids out and reads the id column only.
"""

from __future__ import annotations

import numpy as np

INDEX_GROUP = "ids_index"
INDEX_CHUNK = 65536
MAX_INDEX_BYTES = 2 ** 30  # ids, their order and the sorted copy, in the committing process


def in_order(ids: np.ndarray) -> bool:
    return len(ids) < 2 or bool(np.all(ids[1:] >= ids[:-1]))


def _fits(arr) -> bool:
    """Whether sorting the ids (a Zarr array) stays within MAX_INDEX_BYTES, judged before reading
    them all: text by its first 1,000 ids."""
    n = arr.shape[0]
    sample = arr[:min(n, 1000)]
    per_id = 8 + max((len(str(v)) for v in sample), default=0) if sample.dtype.kind in "OTU" else sample.itemsize
    return n * (2 * per_id + 8) <= MAX_INDEX_BYTES


def _sorted(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted, the row of each)."""
    order = np.argsort(ids, kind="stable")
    return ids[order], order.astype(np.int64)


def index_zarr(g) -> None:
    """At commit, in the group being committed: the ids index, where the ids are out of order."""
    import zarr

    ids = g["ids"]
    if _zarr_in_order(ids) or not _fits(ids):  # read chunk by chunk: a store in order costs no memory here
        return
    built = _sorted(ids[:])
    sub = g.create_group(INDEX_GROUP)
    for name, values, dtype in zip(("ids", "rows"), built, (g["ids"].dtype, "int64")):
        a = sub.create_array(name, shape=values.shape, chunks=(INDEX_CHUNK,), dtype=dtype,
                             config={"write_empty_chunks": True}, dimension_names=("sorted_id",),
                             compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()])
        a[:] = values


def _zarr_in_order(arr) -> bool:
    step, last = arr.chunks[0] * 16, None
    for a in range(0, arr.shape[0], step):
        ids = arr[a:a + step]
        if not in_order(ids) or (last is not None and len(ids) and ids[0] < last):
            return False
        last = ids[-1] if len(ids) else last
    return True


def bisect(arr, wanted: list[str]) -> dict[str, int]:
    """Positions in a sorted 1-d Zarr array of the `wanted` ids (as text) found there; each chunk
    read at most once (a read costs a whole chunk)."""
    step, chunks = arr.chunks[0], {}

    def at(i: int):
        c = i // step
        if c not in chunks:
            chunks[c] = arr[c * step:(c + 1) * step]
        v = chunks[c][i - c * step]
        return v.item() if hasattr(v, "item") else v

    found = {}
    for text in wanted:
        try:
            want = int(text) if arr.dtype.kind in "iu" else text
        except ValueError:
            continue
        lo, hi = 0, arr.shape[0]
        while lo < hi:
            mid = (lo + hi) // 2
            v = at(mid)
            if v == want:
                found[text] = mid
                break
            lo, hi = (mid + 1, hi) if v < want else (lo, mid)
    return found


def lookup_zarr(g, wanted: list[str]) -> dict[str, int] | None:
    """Store positions of `wanted` through the index; None where the store has no index."""
    if INDEX_GROUP not in g:
        return None
    sub = g[INDEX_GROUP]
    rows, ids = sub["rows"], g["ids"]
    found = {text: int(rows[k]) for text, k in bisect(sub["ids"], wanted).items()}
    for text, row in found.items():  # one chunk read each: an index that disagrees is not used
        if str(ids[row]) != text:
            return None
    return found
