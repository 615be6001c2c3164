"""Cutting a CSV's bytes at row ends, for the index pass of aepipe.sources.csv: a quote-aware
newline scan (a newline inside quotes stays inside its row), over a stream read in pieces of
READ_BYTES, into blocks of at most BLOCK_ROWS rows. Only bytes here: parsing is pyarrow's.
"""

from __future__ import annotations

import numpy as np

from aepipe.errors import AepipeError

BLOCK_ROWS = 1024  # rows per indexed block: a task parses at most one block's worth it does not need
READ_BYTES = 1 << 20  # bytes read at a time by the index pass
MAX_ROW_BYTES = 1 << 25  # a longer row (one 200 MB field, an unclosed quote) is refused, not held whole


def _row_ends(buf: bytes, inside: bool) -> tuple[np.ndarray, bool]:
    """Offsets just past each newline that ends a row (one outside quotes: an even number of '"'
    before it, which also holds for "" escapes), and whether buf ends inside quotes."""
    b = np.frombuffer(buf, np.uint8)
    quotes = np.cumsum(b == ord('"')) + int(inside)
    nl = np.flatnonzero(b == ord("\n"))
    return nl[quotes[nl] % 2 == 0] + 1, bool(quotes[-1] % 2) if len(b) else inside


def pieces(f, name: str):
    """(offset, bytes) of a stream in consecutive pieces of about READ_BYTES, each ending at a row
    end (the last at the end of the file). A row longer than MAX_ROW_BYTES is refused, naming `name`."""
    offset, carry, inside = 0, b"", False
    while piece := f.read(READ_BYTES):
        ends, inside = _row_ends(piece, inside)
        buf = carry + piece
        if len(ends):
            cut = len(carry) + int(ends[-1])
            yield offset, buf[:cut]
            offset, carry = offset + cut, buf[cut:]
        else:
            carry = buf
        if len(carry) > MAX_ROW_BYTES:
            raise AepipeError(f"{name}: a row longer than {MAX_ROW_BYTES >> 20} MiB starts at byte {offset} "
                              "(one enormous field, or a quote never closed); aepipe reads rows up to that size")
    if carry:
        yield offset, carry


def header_end(buf: bytes) -> int:
    ends, _ = _row_ends(buf, False)
    return int(ends[0]) if len(ends) else len(buf)


def cuts(buf: bytes) -> list[tuple[int, int]]:
    """buf split at row ends into spans of at most BLOCK_ROWS lines."""
    ends, _ = _row_ends(buf, False)
    if not len(ends) or ends[-1] != len(buf):
        ends = np.append(ends, len(buf))  # the file's last row, without a newline
    bounds = [0] + [int(e) for e in ends[BLOCK_ROWS - 1::BLOCK_ROWS]]
    if bounds[-1] != len(buf):
        bounds.append(len(buf))
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
