"""aepipe: autoencoder training, encoding and decoding on Ray. The import package is `pipeline`."""

__version__ = "0.1.0"


class AepipeError(Exception):
    """A problem the user can fix (bad path, wrong schema, NaN...). The CLI prints it as one line.

    exit_code follows DESIGN.md: 2 for bad usage or bad input, 1 for a failure at run time.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def __getattr__(name: str):
    """pipeline.load_codes and pipeline.AutoencoderFeatures, imported on first use: `import pipeline`
    stays light (no torch, no scikit-learn) for the command line."""
    if name in ("load_codes", "AutoencoderFeatures"):
        from pipeline import features

        return getattr(features, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
