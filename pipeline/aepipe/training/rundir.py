"""The training side of a run dir: its checkpoints and its loss curve.

    checkpoints/latest.txt                     the latest checkpoint, relative to checkpoints/
    checkpoints/process/checkpoint_latest/     an in-process fit's checkpoint (state.pt)
    checkpoints/train-*/checkpoint_*/          a Ray Train fit's (Ray keeps the last two)

--resume continues from the checkpoint latest.txt names, a fact that survives a copy or an upload
(file times do not). Run dirs written before latest.txt have none: for them, the newest state.pt
by modification time, as aepipe found it then."""

from __future__ import annotations

from pathlib import Path

import torch

from aepipe.statefile import load_state

LATEST = "latest.txt"
STATE = "state.pt"
IN_PROCESS = Path("process") / "checkpoint_latest"  # Ray Train's layout, so one discovery finds either


def save_checkpoint(storage: Path, content: dict) -> None:
    """An in-process fit's checkpoint, written whole (a crash mid-write leaves the previous one
    whole), then named the latest."""
    d = storage / IN_PROCESS
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (STATE + ".tmp")
    torch.save(content, tmp)
    tmp.replace(d / STATE)
    point_at(storage, d)


def load_checkpoint(ckpt: str | Path) -> dict:
    return load_state(Path(ckpt) / STATE)


def point_at(storage: Path, ckpt: str | Path) -> None:
    """Name ckpt, a checkpoint folder under storage, the latest (written whole, as the checkpoint)."""
    rel = Path(ckpt).resolve().relative_to(storage.resolve()).as_posix()
    tmp = storage / (LATEST + ".tmp")
    tmp.write_text(rel + "\n")
    tmp.replace(storage / LATEST)


def point_at_newest(storage: Path, fit: Path) -> None:
    """Name the newest checkpoint of one Ray Train fit's folder the latest, if it has one and the
    pointer names another. Ray names a fit's checkpoints in the order it writes them
    (checkpoint_000003, or a timestamp under Ray Train v2)."""
    found = sorted(p.parent for p in fit.glob(f"checkpoint_*/{STATE}"))
    if found and _named(storage) != str(found[-1]):
        point_at(storage, found[-1])


def latest_checkpoint(storage: Path) -> str | None:
    """The checkpoint --resume continues from: the one latest.txt names, or in a run dir from
    before it, the newest any earlier fit left (by modification time)."""
    named = _named(storage)
    if named:
        return named
    found = sorted(storage.glob(f"*/checkpoint_*/{STATE}"), key=lambda p: p.stat().st_mtime)
    return str(found[-1].parent) if found else None


def _named(storage: Path) -> str | None:
    """The checkpoint latest.txt names, if it is there and inside storage (never a file outside it)."""
    try:
        rel = (storage / LATEST).read_text().strip()
    except OSError:
        return None
    ckpt = (storage / rel).resolve()
    if not rel or storage.resolve() not in ckpt.parents or not (ckpt / STATE).is_file():
        return None
    return str(storage / rel)


def plot_loss(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] + 1 for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train")
    ax.plot(ep, [h["val_loss"] for h in history], label="validation")
    losses = [h[k] for h in history for k in ("train_loss", "val_loss")]
    positive = all(v > 0 for v in losses)  # a loss of exactly 0 (a row or two) has no log scale
    ax.set(xlabel="epoch", ylabel="loss", yscale="log" if positive else "linear", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
