"""State files, read safely: a run dir's model.pt and a checkpoint's state.pt hold tensors,
numbers and plain containers, and a file that says otherwise is refused, never executed.

Its own module, below aepipe.run, so the training drivers (Ray Train's workers among them) read
their checkpoints the way load_run reads weights without importing the whole run dir."""

from __future__ import annotations

import pickle
from pathlib import Path

from aepipe.errors import AepipeError


def load_state(path: str | Path) -> dict:
    """A checkpoint or weights file, read as tensors, numbers and plain containers only: a pickle
    that would build any other object (and so could run code) is refused, never executed."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "unsupported object"
        raise AepipeError(f"{path}: holds more than tensors and plain values, refusing to load it "
                          f"(a file from elsewhere must not run code: {reason})") from None
    except Exception as e:
        raise AepipeError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
