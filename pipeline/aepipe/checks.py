"""Refusing bad input before any work starts: option values, config files, output paths.

Everything here runs before Ray is started or a byte is written, so a mistake costs the user a
second and leaves nothing behind. Each refusal is one AepipeError naming the option or path.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from aepipe import remote
from aepipe.stores import NEW_ONLY
from aepipe.errors import AepipeError

PARTIAL = ".partial"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def at_least(name: str, value, lo, hint: str = "") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo:
        raise AepipeError(f"{flag(name)} {value}: must be a number ≥ {lo:g}" + (f" ({hint})" if hint else ""))


def positive(name: str, value, integer: bool = True, hint: str = "") -> None:
    if value is None:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive, finite number"
        raise AepipeError(f"{flag(name)} {value}: must be {kind}" + (f" ({hint})" if hint else ""))


def fraction(name: str, value, closed_low: bool = False) -> None:
    """0 < value < 1 (or 0 ≤ value < 1)."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not ((0 <= value) if closed_low else (0 < value)) or value >= 1:
        raise AepipeError(f"{flag(name)} {value}: must be between 0 and 1" + (" (0 allowed)" if closed_low else ""))


def typed_options(cls, opts: dict, source: str) -> dict:
    """Check each option's type against the dataclass field's default (a config file can hold
    anything: "epochs": "ten" must be refused here, not become a TypeError deep inside)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in opts:
            continue
        v, want = opts[f.name], f.default
        if v is None and want is None:
            out[f.name] = v
            continue
        if f.name == "hidden":
            if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
                raise AepipeError(f'{source}: "hidden" must be a list of integers, e.g. [256, 64]; got {v!r}')
            out[f.name] = tuple(v)
            continue
        if f.name == "input_shape":
            continue
        # the default's type, or for a None default the annotation's first type ("bool | None")
        kind = type(want) if want is not None else {"bool": bool, "int": int, "float": float}.get(
            str(f.type).split("|")[0].strip(), str)
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise AepipeError(f'{source}: "{f.name}" must be {kind.__name__}, got {v!r}')
        out[f.name] = v
    return out


# Bounds on sizes no real fit asks for, so a typo of 10^9 is one line instead of an out-of-memory
# kill (the epoch schedule is a list, a layer a matrix). The model as a whole is bounded too
# (models.MAX_PARAMETERS).
MAX_EPOCHS = 10 ** 6
MAX_WIDTH = 2 ** 16  # units of one hidden layer, or of the code


def at_most(name: str, value, hi: int, what: str) -> None:
    if value is not None and value > hi:
        raise AepipeError(f"{flag(name)} {value}: at most {hi} {what}")


def train_options(mcfg, tcfg) -> None:
    """Every TrainConfig/ModelConfig value in range; the family-specific names are checked by
    build_model afterwards (it knows the registry)."""
    if tcfg.epochs is not None:  # None: the budget in steps decides
        positive("epochs", tcfg.epochs, hint="train for at least one epoch")
        at_most("epochs", tcfg.epochs, MAX_EPOCHS, "epochs")
    positive("steps", tcfg.steps)
    at_least("weight_decay", tcfg.weight_decay, 0)
    if tcfg.schedule not in ("cosine", "constant"):
        raise AepipeError(f'--schedule {tcfg.schedule}: choose cosine or constant')
    positive("batch_size", tcfg.batch_size)
    positive("lr", tcfg.lr, integer=False)
    positive("workers", tcfg.workers)
    at_least("gpus_per_worker", tcfg.gpus_per_worker, 0)
    if tcfg.patience is not None:
        at_least("patience", tcfg.patience, 0)
    at_least("seed", tcfg.seed, 0)
    fraction("val_fraction", tcfg.val_fraction)
    positive("code_dim", mcfg.code_dim)
    at_most("code_dim", mcfg.code_dim, MAX_WIDTH, "code dimensions")
    positive("pretrain_epochs", mcfg.pretrain_epochs)
    at_most("pretrain_epochs", mcfg.pretrain_epochs, MAX_EPOCHS, "epochs")
    if mcfg.hidden is not None and (not mcfg.hidden or any(h < 1 for h in mcfg.hidden)):
        raise AepipeError(f"--hidden {','.join(map(str, mcfg.hidden)) or '(empty)'}: widths must be positive integers")
    if mcfg.hidden is not None and max(mcfg.hidden) > MAX_WIDTH:
        raise AepipeError(f"--hidden {','.join(map(str, mcfg.hidden))}: at most {MAX_WIDTH} units a layer")
    for name in ("sparsity_weight", "contractive_weight", "noise_std", "beta"):
        at_least(name, getattr(mcfg, name), 0)
    fraction("rho", mcfg.rho)
    fraction("mask_prob", mcfg.mask_prob, closed_low=True)


# ---------------------------------------------------------------- paths

def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _kinds(suffixes) -> str:
    text = "ending in " + " or ".join(s for s in suffixes if s)
    return text + (", or a folder name without a suffix (PNG images)" if "" in suffixes else "")


def output_path(out: str | Path, overwrite: bool, suffixes: tuple[str, ...], inputs: tuple = ()) -> Path:
    """Refuse an output aepipe must not write: wrong kind, name too long, already there without
    --overwrite, an unusable folder, or one that is, holds or lies inside an input (after
    resolving links) — replacing it would destroy the data being read, whatever --overwrite says."""
    if remote.is_uri(out):
        return _uri_output(remote.URI(out), overwrite, suffixes, inputs)
    out = Path(remote.local_or_uri(out))
    if suffixes and out.suffix not in suffixes:
        raise AepipeError(f"{out}: choose an output {_kinds(suffixes)}")
    limit = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if len((out.name + PARTIAL).encode()) > limit:
        raise AepipeError(f"{out.name[:40]}...: output name too long ({len(out.name.encode())} bytes; "
                          f"the most is {limit - len(PARTIAL)})")
    real = out.resolve()
    for inp in inputs:
        if inp is None or str(inp).startswith("builtin:") or remote.is_uri(inp):  # a URI never overlaps a local path
            continue
        src = Path(remote.local_or_uri(inp)).resolve()
        if _inside(real, src) or _inside(src, real):
            rel = "is" if real == src else "lies inside" if _inside(real, src) else "holds"
            raise AepipeError(f"--out {out} {rel} the input {inp}; writing there would destroy it "
                              "(--overwrite does not change this): choose another --out")
    # a link at OUT or OUT.partial would be written through (or deleted through, by --overwrite)
    for link in (out, out.with_name(out.name + PARTIAL)):
        if link.is_symlink():
            raise AepipeError(f"--out {out}: {link} is a link (to {os.readlink(link)}); aepipe never writes "
                              "through a link: give the real path, or remove the link")
    if out.exists() and not overwrite:
        raise AepipeError(f"{out} already exists; pass --overwrite to replace it")
    (NEW_ONLY.discard if overwrite else NEW_ONLY.add)(str(out.absolute()))  # see aepipe.stores.NEW_ONLY
    parent = real.parent
    while not parent.exists():  # missing folders are created; the nearest existing one must be usable
        parent = parent.parent
    if not parent.is_dir():
        raise AepipeError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AepipeError(f"--out {out}: no permission to write in {parent}")
    return out


def _uri_overlaps(a: str, b: str) -> bool:
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _uri_output(out, overwrite: bool, suffixes: tuple[str, ...], inputs: tuple):
    """output_path for a URI: the same refusals, on object prefixes (an object store has no
    links, permissions are only known on writing, and its bucket must already exist)."""
    if suffixes and out.suffix not in suffixes:
        raise AepipeError(f"{out}: choose an output {_kinds(suffixes)}")
    if out.suffix == ".npy":  # written by one process through a local file, renamed into place
        raise AepipeError(f"{out}: a .npy output must be a local path; choose .zarr or .parquet for a URI")
    if out.suffix == ".zarr":
        remote.check_zarr_scheme(out)
    for inp in inputs:
        if inp is not None and remote.is_uri(inp) and _uri_overlaps(str(out), str(inp)):
            raise AepipeError(f"--out {out} overlaps the input {inp}; writing there would destroy it "
                              "(--overwrite does not change this): choose another --out")
    remote.check_writable(out)
    if remote.exists(out) and not overwrite:
        raise AepipeError(f"{out} already exists; pass --overwrite to replace it")
    return out


def run_dir_output(out: str | Path, data: str, resume: bool) -> Path:
    """train --out: a run dir, never the data folder nor inside it."""
    if remote.is_uri(out):  # train writes a local run dir and uploads it (aepipe.training.train)
        if remote.is_uri(data) and _uri_overlaps(str(out), str(data)):
            raise AepipeError(f"--out {out} overlaps the training data {data}; choose a run dir outside it")
        remote.check_writable(out)
        if remote.is_file(out):
            raise AepipeError(f"--out {out}: exists and is not a folder")
        return remote.URI(out)
    out = Path(remote.local_or_uri(out))
    src = None if str(data).startswith("builtin:") else Path(data)
    if src is not None and src.exists():
        real, s = out.resolve(), src.resolve()
        if _inside(real, s) or _inside(s, real):
            raise AepipeError(f"--out {out} overlaps the training data {data}; choose a run dir outside it")
    if out.exists() and not out.is_dir():
        raise AepipeError(f"--out {out}: exists and is not a folder")
    parent = out.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise AepipeError(f"--out {out}: cannot create a run dir under {parent}")
    return out
