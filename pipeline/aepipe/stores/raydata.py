"""The one module that knows Ray Data's Datasink: a store writer (a sink of aepipe.stores.staging) wrapped so
that Ray's write tasks and its driver-side calls reach it. The writers themselves take blocks of
numpy arrays and a plain list of write results, as the in-process engine hands them."""

from __future__ import annotations


def as_datasink(sink):
    """`sink` as a Ray Data Datasink: the calls Ray makes, passed through (Ray pickles it, sink
    and all, into its write tasks)."""
    from ray.data import Datasink

    class Staged(Datasink):
        def __init__(self, inner):
            self.inner = inner

        def on_write_start(self, schema=None) -> None:
            self.inner.on_write_start()

        def write(self, blocks, ctx):
            from ray.data.block import BlockAccessor

            return self.inner.write(BlockAccessor.for_block(b).to_numpy() for b in blocks)  # streamed

        def on_write_complete(self, write_result) -> None:
            self.inner.on_write_complete(list(write_result.write_returns))

        def on_write_failed(self, error: Exception) -> None:
            self.inner.on_write_failed(error)

        def get_name(self) -> str:
            return type(self.inner).__name__

    return Staged(sink)
