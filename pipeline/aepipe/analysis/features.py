"""aepipe's models as a scikit-learn step, in this process (no Ray): a batch goes through the model here.

    clf = make_pipeline(aepipe.AutoencoderFeatures("runs/digits"), LogisticRegression())   # a trained run dir
    clf = make_pipeline(aepipe.AutoencoderFeatures(code_dim=8), LogisticRegression())      # trained by fit

(Its companion for stores, aepipe.load_codes, lives with the other store readers in stores.read.)
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from aepipe.errors import AepipeError
from aepipe.run import load_run


class AutoencoderFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """An autoencoder as a scikit-learn transformer: rows (n, features) -> codes (n, code_dim).

    With `run_dir`, a model `aepipe train` made: fit only checks the data's width (the model is
    trained; transform works before fit too). Without, fit(X) trains one on X through aepipe's own
    fit loop (`family`, `code_dim`, `hidden`, `epochs`, `random_state`, as `aepipe train` takes them).
    transform encodes, inverse_transform decodes back to the data's units; rows are flattened
    (digits are (n, 64)); codes are float32 whatever the input's dtype. The fitted transformer holds
    the model itself (weights, normaliser, schema): pickled, it works without its run dir.
    """

    def __init__(self, run_dir: str | Path | None = None, family: str = "dense", code_dim: int = 16,
                 hidden: tuple[int, ...] | None = None, epochs: int = 50, random_state: int = 0,
                 batch_size: int = 4096, verbose: bool = False):
        self.run_dir = run_dir
        self.family = family
        self.code_dim = code_dim
        self.hidden = hidden
        self.epochs = epochs
        self.random_state = random_state
        self.batch_size = batch_size
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = self.run_dir is None  # a run dir's model is trained already
        tags.transformer_tags.preserves_dtype = ["float32"]  # the model computes in float32
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return self.run_dir is not None or hasattr(self, "run_")

    @property
    def _run(self):
        if not hasattr(self, "run_"):  # a run dir used before fit: loaded on first use
            check_is_fitted(self)
            self.run_ = load_run(self.run_dir)
            self.n_features_in_ = self.run_.schema.size
        return self.run_

    @property
    def _n_features_out(self) -> int:
        return self._run.code_dim

    def fit(self, X, y=None):
        X = _flat(X)
        if self.run_dir is not None:
            self.run_ = load_run(self.run_dir)
            self.n_features_in_ = self.run_.schema.size
            validate_data(self, X, reset=False)  # scikit-learn's own message for the wrong width
            return self
        X = validate_data(self, X, dtype=np.float32)
        if len(X) < 2:
            raise ValueError(f"{len(X)} sample(s): an autoencoder needs at least 2 rows to train")
        if self.code_dim > X.shape[1]:
            raise ValueError(f"code_dim={self.code_dim} is more than the data's {X.shape[1]} feature(s)")
        self.run_ = self._train(X)
        return self

    def _train(self, X: np.ndarray):
        """aepipe train on X, in a run dir that lives only as long as the fit."""
        from aepipe.models import ModelConfig
        from aepipe.training import TrainConfig, train

        mcfg = ModelConfig(family=self.family, code_dim=self.code_dim,
                           **({"hidden": tuple(self.hidden)} if self.hidden is not None else {}))
        tcfg = TrainConfig(epochs=self.epochs, seed=self.random_state)
        with tempfile.TemporaryDirectory(prefix="aepipe-fit-") as d:
            np.save(f"{d}/x.npy", np.ascontiguousarray(X))
            quiet = contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())
            try:
                with quiet:
                    train(f"{d}/x.npy", f"{d}/run", mcfg, tcfg)
            except AepipeError as e:
                raise ValueError(str(e).replace(f"{d}/", "")) from None
            return load_run(f"{d}/run")  # weights, normaliser and schema in memory: the folder may go

    def _rows(self, X, width: int) -> np.ndarray:
        check_is_fitted(self)
        run = self._run
        X = _flat(X)
        if width == run.schema.size:
            return validate_data(self, X, dtype=np.float32, reset=False)
        X = check_array(X, dtype=np.float32)
        if X.shape[1] != width:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting {width} "
                             "features (codes) as input.")
        return X

    def _batched(self, X: np.ndarray, fn) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return np.concatenate([fn(torch.from_numpy(X[i:i + self.batch_size]))
                                   for i in range(0, len(X), self.batch_size)])

    def transform(self, X) -> np.ndarray:
        run = self._run
        X = self._rows(X, run.schema.size).reshape(-1, *run.schema.shape)
        return self._batched(run.normalizer.apply(X), lambda x: run.model.encode(x).numpy())

    def inverse_transform(self, X) -> np.ndarray:
        run = self._run
        Z = self._rows(X, run.code_dim)
        x = self._batched(Z, lambda z: run.model.decode(z).numpy())
        return run.normalizer.invert(x).reshape(len(Z), -1).astype(np.float32)


def _flat(X):
    """Rows of any shape (images, sequences) flattened to (n, features), other input as it is."""
    a = np.asarray(X) if not hasattr(X, "shape") else X
    return a.reshape(len(a), -1) if getattr(a, "ndim", 2) > 2 else X
