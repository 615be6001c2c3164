"""aepipe: autoencoder training, encoding and decoding on Ray."""

from aepipe.errors import AepipeError  # noqa: F401 - part of the package's API
from aepipe.version import __version__  # noqa: F401


def __getattr__(name: str):
    """aepipe.load_codes and aepipe.AutoencoderFeatures, imported on first use: `import aepipe`
    stays light (no torch, no scikit-learn) for the command line."""
    if name == "load_codes":
        from aepipe.stores.read import load_codes

        return load_codes
    if name == "AutoencoderFeatures":
        from aepipe.analysis.features import AutoencoderFeatures

        return AutoencoderFeatures
    raise AttributeError(f"module 'aepipe' has no attribute {name!r}")
