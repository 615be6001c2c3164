"""A run dir as a scikit-learn step, in this process (no Ray): a batch goes through the model here.

    clf = make_pipeline(aepipe.AutoencoderFeatures("runs/digits"), LogisticRegression())

(Its companion for stores, aepipe.load_codes, lives with the other store readers in stores.read.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from aepipe.run import load_run


class AutoencoderFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A trained run dir as a scikit-learn transformer: rows (n, features) -> codes (n, code_dim).

    The model is trained already, so fit only checks the data's width; transform encodes,
    inverse_transform decodes back to the data's units. Rows are flattened: digits are (n, 64).
    """

    def __init__(self, run_dir: str | Path = "runs/digits", batch_size: int = 4096):
        self.run_dir = run_dir
        self.batch_size = batch_size

    def __sklearn_is_fitted__(self) -> bool:
        return True  # pre-fitted: transform works without fit

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags

    @property
    def _run(self):
        # loaded on first use and dropped when pickled (see __getstate__): the run dir is the state
        if getattr(self, "_loaded", None) is None or self._loaded[0] != str(self.run_dir):
            self._loaded = (str(self.run_dir), load_run(self.run_dir))
        return self._loaded[1]

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_loaded"}

    @property
    def _n_features_out(self) -> int:
        return self._run.code_dim

    def fit(self, X, y=None):
        self._rows(X)  # no training: only refuse data of the wrong width
        self.n_features_in_ = self._run.schema.size
        return self

    def _rows(self, X, width=None) -> np.ndarray:
        from sklearn.utils.validation import check_array

        X = check_array(X, dtype=np.float32, allow_nd=True)
        X = X.reshape(len(X), -1)
        want = width or self._run.schema.size
        if X.shape[1] != want:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} ({self.run_dir}) "
                             f"is expecting {want} features as input.")
        return X

    def _batched(self, X: np.ndarray, fn) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return np.concatenate([fn(torch.from_numpy(X[i:i + self.batch_size]))
                                   for i in range(0, len(X), self.batch_size)])

    def transform(self, X) -> np.ndarray:
        run = self._run
        X = self._rows(X).reshape(-1, *run.schema.shape)
        return self._batched(run.normalizer.apply(X), lambda x: run.model.encode(x).numpy())

    def inverse_transform(self, X) -> np.ndarray:
        run = self._run
        Z = self._rows(X, run.code_dim)
        x = self._batched(Z, lambda z: run.model.decode(z).numpy())
        return run.normalizer.invert(x).reshape(len(Z), -1)
