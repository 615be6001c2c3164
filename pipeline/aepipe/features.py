"""Codes for downstream use in Python: load a codes store, or use a run dir as a scikit-learn step.

    ids, codes = aepipe.load_codes("codes.zarr")                  # int8 codes come back de-quantised
    clf = make_pipeline(aepipe.AutoencoderFeatures("runs/digits"), LogisticRegression())

Both run in this process (no Ray): a store is read range by range, a batch goes through the model here.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from aepipe.errors import AepipeError

FORMATS = ("numpy", "pandas", "arrow")


def local_path(uri: str | Path) -> Path | str:
    """A local path from a path or a file:// URI; other URIs (s3://, gs://) as they are, which
    the store readers open through pyarrow and fsspec."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a Windows drive letter is no scheme
        return Path(parsed.path if parsed.scheme == "file" else text)
    return text


def load_codes(store: str | Path, as_: str = "numpy"):
    """Every row of a codes store (Zarr or Parquet), codes as float32 (int8 de-quantised).

    numpy: (ids, codes (N, d)); pandas: a DataFrame indexed by id with columns code_0..code_{d-1};
    arrow: a Table with columns id and code (fixed-size list), like a Parquet codes store."""
    from aepipe.stores.read import dequantize, open_codes, quant_range

    if as_ not in FORMATS:
        raise AepipeError(f'as_="{as_}": choose one of {", ".join(FORMATS)}')
    src, attrs = open_codes(local_path(store))
    parts = [src.read(a, b) for a, b in src.ranges()]
    ids = np.concatenate([p[0] for p in parts])
    codes = dequantize(np.concatenate([p[1] for p in parts]), attrs["dtype"], *quant_range(attrs))
    if as_ == "numpy":
        return ids, codes
    if as_ == "pandas":
        import pandas as pd

        return pd.DataFrame(codes, index=pd.Index(ids, name="id"),
                            columns=[f"code_{i}" for i in range(codes.shape[1])])
    import pyarrow as pa

    flat = pa.array(codes.ravel())
    return pa.table({"id": ids, "code": pa.FixedSizeListArray.from_arrays(flat, codes.shape[1])})


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
            from aepipe.run import load_run

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
