"""aepipe export: a run dir's encoder as a torch.export program (.pt2), for serving where aepipe is
not installed. The program takes rows in the data's own units, flattened (n, features), float32,
and returns the codes `aepipe encode --dtype float32` writes; the run's normalisation is inside it.

    import torch
    encoder = torch.export.load("encoder.pt2").module()
    codes = encoder(torch.from_numpy(rows))   # rows: (n, features) float32

torch.export is PyTorch's own format for whole programs: loading needs torch only (no aepipe, no
Python class of the model), and the same file feeds AOTInductor for C++ serving."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from aepipe import remote
from aepipe.checks import output_path
from aepipe.errors import AepipeError
from aepipe.run import META, Run, load_run


class RowsToCodes(torch.nn.Module):
    """Flattened rows in the data's units -> codes: the run's normaliser, then the encoder."""

    def __init__(self, run: Run):
        super().__init__()
        shift, scale = run.normalizer._arrays(tuple(run.schema.shape))
        shape = tuple(run.schema.shape)
        self.register_buffer("shift", torch.as_tensor(np.broadcast_to(shift, shape), dtype=torch.float32).clone())
        self.register_buffer("scale", torch.as_tensor(np.broadcast_to(scale, shape), dtype=torch.float32).clone())
        self.shape, self.model = shape, run.model

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x = rows.reshape(rows.shape[0], *self.shape)
        return self.model.encode((x - self.shift) / self.scale)


def export(model: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write the encoder of run dir `model` to `out` (.pt2). Returns what the summary line says."""
    if remote.is_uri(out):
        raise AepipeError(f"--out {out}: export writes a local file; copy it to the object store after")
    run = load_run(model)
    out = output_path(out, overwrite, (".pt2",), inputs=(model,))
    if run.meta["family"] == "compress":
        raise AepipeError(f"{model}: a compress model codes images as entropy-coded bitstreams, which only "
                          "aepipe encode writes; export takes the families whose codes are vectors")
    module = RowsToCodes(run).eval()
    example = torch.zeros(2, run.schema.size)
    try:
        program = torch.export.export(module, (example,),
                                      dynamic_shapes={"rows": {0: torch.export.Dim("rows", min=1)}})
    except Exception as e:  # a family whose encoder torch.export cannot trace
        raise AepipeError(f"{model}: torch.export cannot export the {run.meta['family']} encoder "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:160]})", exit_code=1) from None
    about = {"aepipe": META, "family": run.meta["family"], "model_fingerprint": run.fingerprint,
             "features": run.schema.size, "code_dim": run.code_dim, "input_shape": list(run.schema.shape)}
    buffer = io.BytesIO()  # (torch.export warns about a file whose name does not end in .pt2: OUT.partial)
    torch.export.save(program, buffer, extra_files={"aepipe.json": json.dumps(about)})
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(buffer.getbuffer())
    os.replace(partial, out)  # whole or not at all
    return {**about, "out": str(out), "bytes": out.stat().st_size}
