"""The package version, recorded in every run dir and store that aepipe writes."""

__version__ = "0.1.0"
