"""aepipe: autoencoder training, encoding and decoding on Ray. The import package is `pipeline`."""

from pipeline.errors import AepipeError  # noqa: F401 - part of the package's API
from pipeline.version import __version__  # noqa: F401


def __getattr__(name: str):
    """pipeline.load_codes and pipeline.AutoencoderFeatures, imported on first use: `import pipeline`
    stays light (no torch, no scikit-learn) for the command line."""
    if name in ("load_codes", "AutoencoderFeatures"):
        from pipeline import features

        return getattr(features, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
