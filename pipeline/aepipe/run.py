"""A run dir: what training leaves behind, and everything encode/decode need to load it.

    runs/NAME/model.pt         best weights (a state dict)
    runs/NAME/aepipe.json      family, hyper-parameters, input schema, normalisation, code range,
                               metrics per epoch, data fingerprint, aepipe version
    runs/NAME/loss_curve.png   train and validation loss per epoch
    runs/NAME/checkpoints/     the fit's checkpoints and latest.txt naming the latest, for --resume
                               (see aepipe.training.rundir)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aepipe import remote
from aepipe.errors import AepipeError
from aepipe.normalize import Normalizer
from aepipe.sources import Schema
from aepipe.statefile import load_state

if TYPE_CHECKING:  # annotations only
    import torch

    from aepipe.models.base import ModelConfig

# torch and aepipe.models are imported where used: `aepipe info RUN_DIR` reads JSON only, in well under 1 s
# (from aepipe.models.base, what a run dir needs: importing it registers every family all the same)

META = "aepipe.json"
WEIGHTS = "model.pt"
DENSITY = "density.pt"  # the training codes' and residuals' Gaussians (score's code, combined and linear kinds)


def model_config_from_json(d: dict) -> ModelConfig:
    from aepipe.models.base import ModelConfig

    d = dict(d)
    d["input_shape"] = tuple(d["input_shape"])
    d["hidden"] = tuple(d["hidden"]) if d.get("hidden") else None
    d.setdefault("init", "none")  # run dirs from before --init pca have no floor in their weights
    d.setdefault("prior", "factorized")  # nor those from before --prior a prior but the factorized one
    return ModelConfig(**d)


def weights_fingerprint(state: dict) -> str:
    """A hash of every tensor's name, dtype, shape and bytes: the same weights give the same
    fingerprint however they were saved, and any other weights a different one."""
    import torch

    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


@dataclasses.dataclass
class Run:
    path: Path
    meta: dict
    model: torch.nn.Module  # in eval mode, on the CPU
    schema: Schema
    normalizer: Normalizer
    density: dict | None = None  # DENSITY's tensors; None in run dirs from before it

    @property
    def code_dim(self) -> int:
        return self.meta["model"]["code_dim"]

    @property
    def fingerprint(self) -> str:
        return self.meta["model_fingerprint"]

    def __getstate__(self) -> dict:
        # pickled as aepipe.json's dict and the weights, rebuilt on load: a pickle never names a
        # model's class, so it loads whatever module the class lives in
        return {"path": self.path, "meta": self.meta, "weights": self.model.state_dict(), "density": self.density}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(vars(_assemble(state["path"], state["meta"], state["weights"], state.get("density"))))

    def code_range(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.meta["code_range"]
        return np.asarray(r["lo"], np.float32), np.asarray(r["hi"], np.float32)


def save_run(path: Path, meta: dict, state: dict, density: dict | None = None) -> dict:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "model_fingerprint": weights_fingerprint(state)}  # what load_run checks the weights against
    torch.save(state, path / WEIGHTS)
    if density is not None:
        torch.save(density, path / DENSITY)
        meta["density_fingerprint"] = weights_fingerprint(density)
    tmp = path / (META + ".tmp")  # aepipe.json appears last and whole: its presence means complete
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path / META)
    return meta


def load_run(path: str | Path) -> Run:
    """A run dir, local or at a URI (its aepipe.json and model.pt fetched into a temporary folder,
    then checked exactly as a local one); Run.path stays the URI, so Ray workers fetch it too."""
    import tempfile

    if not remote.is_uri(path):
        return _load_local(Path(remote.local_or_uri(path)))
    uri = remote.URI(path)
    with tempfile.TemporaryDirectory(prefix="aepipe-run-") as d:
        remote.download(uri, Path(d), only=(META, WEIGHTS, DENSITY))
        try:
            run = _load_local(Path(d))
        except AepipeError as e:  # name the URI, not the temporary copy
            raise AepipeError(str(e).replace(d, uri.rstrip("/")), e.exit_code) from None
    run.path = uri
    return run


def _load_local(path: Path) -> Run:
    import torch

    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise AepipeError(f"{path}: not an aepipe run dir (no {META} and {WEIGHTS}; make one with aepipe train)")
    meta = read_meta(path)
    state = load_state(path / WEIGHTS)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AepipeError(f"{path / WEIGHTS}: not a state dict of tensors")
    found = weights_fingerprint(state)
    if found != meta.get("model_fingerprint"):  # weights swapped or damaged: never encode with them
        raise AepipeError(f"{path / WEIGHTS}: its weights (fingerprint {found}) are not the ones {META} "
                          f"describes ({meta.get('model_fingerprint')}); the run dir was altered")
    return _assemble(path, meta, state, _load_density(path, meta))


def _load_density(path: Path, meta: dict) -> dict | None:
    """DENSITY's tensors, checked against aepipe.json like the weights; None where the run has none."""
    import torch

    if "density_fingerprint" not in meta:
        return None
    density = load_state(path / DENSITY) if (path / DENSITY).is_file() else None
    if not isinstance(density, dict) or not all(isinstance(v, torch.Tensor) for v in density.values()) \
            or weights_fingerprint(density) != meta["density_fingerprint"]:
        raise AepipeError(f"{path / DENSITY}: missing, or not the one {META} describes; the run dir was altered")
    return density


def _assemble(path, meta: dict, state: dict, density: dict | None = None) -> Run:
    """A Run from aepipe.json's dict and checked weights."""
    from aepipe.models.base import build_model

    try:
        model = build_model(model_config_from_json(meta["model"]))
        model.load_state_dict(state)
        schema, norm = Schema.from_json(meta["schema"]), Normalizer.from_json(meta["normalizer"])
    except Exception as e:
        raise AepipeError(f"{path}: run dir is damaged ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    model.eval()
    return Run(path, meta, model, schema, norm, density)


def is_run_dir(path: str | Path) -> bool:
    if remote.is_uri(path):
        return remote.is_file(remote.URI(path) / META)
    return (Path(remote.local_or_uri(path)) / META).is_file()


def read_meta(path: str | Path) -> dict:
    """aepipe.json as a dict (a local run dir or one at a URI), or one clear error naming the file."""
    f = remote.URI(path) / META if remote.is_uri(path) else Path(remote.local_or_uri(path)) / META
    try:
        meta = json.loads(remote.read_bytes(f) if remote.is_uri(f) else f.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AepipeError(f"{f}: not readable JSON ({type(e).__name__}: {e})") from None
    missing = [k for k in ("model", "schema", "normalizer", "model_fingerprint") if k not in meta] \
        if isinstance(meta, dict) else ["model"]
    if missing:
        raise AepipeError(f'{f}: damaged, no "{missing[0]}" entry')
    return meta


def describe_run(path: Path) -> list[tuple[str, str]]:
    """What `aepipe info RUN_DIR` prints."""
    m = read_meta(path)
    opts = {k: v for k, v in m["model"].items() if k not in ("family", "input_shape", "code_dim", "hidden", "loss")}
    return [("run dir", str(path)), ("family", m["family"]), ("code size", str(m["model"]["code_dim"])),
            ("hidden", str(m["model"]["hidden"] or "family default")), ("loss", m["model"]["loss"]),
            ("input", f'{m["schema"]["shape"]} from {m["source"]} ({m["n_rows"]} rows)'),
            ("columns", ", ".join(m["schema"]["columns"][:8]) + (" ..." if len(m["schema"]["columns"]) > 8 else "")),
            ("normalisation", m["normalizer"]["kind"]),
            ("epochs run", _epochs_run(m["metrics"])),
            *_versus_pca(m), *_cross_check(m),
            ("workers", f'{m["train"]["workers"]} x {m["train"]["gpus_per_worker"]} GPU'),
            ("options", json.dumps(opts)), ("data fingerprint", m["data_fingerprint"]),
            ("model fingerprint", m["model_fingerprint"]), ("aepipe version", m["aepipe_version"]),
            ("created", m["created"])]


def _epochs_run(m: dict) -> str:
    """info's line for the epochs: the fit's, its best and its validation loss; where a small set's
    k-fold check kept the correction, the epochs of the fit on every row that followed."""
    c, stopped = m.get("cross_check") or {}, ", stopped early" if m["stopped_early"] else ""
    if c.get("kept"):
        return (f'{len(m["history"])}{stopped}, then {c["epochs"]} on every row after the k-fold check '
                f'(its held-out loss {m["best_val_loss"]:.5g})')
    return f'{len(m["history"])} (best {m["best_epoch"] + 1}, val loss {m["best_val_loss"]:.5g}{stopped})'


def _cross_check(m: dict) -> list[tuple[str, str]]:
    """info's line for a small set's k-fold check of the correction (training.local.cross_check), if it ran."""
    c = m["metrics"].get("cross_check")
    if not c:
        return []
    return [("cross-check", f'{c["folds"]} folds of {c["rows"]} rows: gain over the floor {c["gain"]:.3g} +- '
                            f'{c["se"]:.2g} at epoch {c["epochs"]}, '
                            + ("kept (fitted again on every row)" if c["kept"] else "within the noise (floor kept)"))]


def _versus_pca(m: dict) -> list[tuple[str, str]]:
    """info's line for the linear floor: the model's validation reconstruction loss beside PCA's."""
    pca, mine = m["metrics"].get("pca") or {}, m["metrics"].get("val_recon")
    if pca.get("val_loss") is None or mine is None:
        return []  # a run dir from before the floor
    return [("vs PCA", f'val {pca.get("figure", m["model"]["loss"])} {mine:.4g}, {pca.get("floor", "PCA")} '
                       f'{pca["code_dim"]}: {pca["val_loss"]:.4g} '
                       f'(init {m["model"].get("init", "none")})')]
