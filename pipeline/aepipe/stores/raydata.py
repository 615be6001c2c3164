"""The one module that knows Ray Data's Datasink: a store writer (a sink of aepipe.stores.staging) wrapped so
that Ray's write tasks reach it. The writers themselves take blocks of numpy arrays and a plain list
of write results, as the in-process engine hands them."""

from __future__ import annotations


def as_datasink(sink):
    """`sink`'s writes as a Ray Data Datasink for one Dataset (one wave of a job, see
    aepipe.batch.engine.RayRows): Ray pickles it, sink and all, into its write tasks, and on the
    driver it keeps what they returned (`.results`). Starting, committing and failing the sink
    are the job's, once for all its waves, so Ray's own calls for them stop here."""
    from ray.data import Datasink

    class Staged(Datasink):
        def __init__(self, inner):
            self.inner, self.results = inner, []

        def write(self, blocks, ctx):
            from ray.data.block import BlockAccessor

            return self.inner.write(BlockAccessor.for_block(b).to_numpy() for b in blocks)  # streamed

        def on_write_complete(self, write_result) -> None:
            self.results = list(write_result.write_returns)

        def get_name(self) -> str:
            return type(self.inner).__name__

    return Staged(sink)
