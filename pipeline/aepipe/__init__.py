"""aepipe: autoencoder training, encoding and decoding on Ray."""

from aepipe.errors import AepipeError  # noqa: F401 - part of the package's API
from aepipe.version import __version__  # noqa: F401


def __getattr__(name: str):
    """aepipe.load_codes and aepipe.AutoencoderFeatures, imported on first use: `import pipeline`
    stays light (no torch, no scikit-learn) for the command line."""
    if name in ("load_codes", "AutoencoderFeatures"):
        from aepipe import features

        return getattr(features, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
