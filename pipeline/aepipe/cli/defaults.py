"""The defaults of the model and training options, read from ModelConfig and TrainConfig: the
only place they are written down. train's options default to None (not given, so a --config file
can set them) and each help text ends with the dataclass field's default instead; tune and demo
do the same for the settings they share with train.

The dataclasses live in aepipe.config, which imports nothing heavy: a help page shows them
without waiting for torch."""

from __future__ import annotations

import dataclasses

from typer.core import TyperCommand

from aepipe.config import ModelConfig, TrainConfig


def config_defaults() -> dict:
    """Field name -> default, for every field of ModelConfig and TrainConfig."""
    return {f.name: f.default for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)}


def shown(default, param) -> str:
    """A default as the help shows it: 0.001 and 1 for floats, the flag in effect for a switch."""
    if isinstance(default, bool):
        return (param.opts if default else param.secondary_opts)[0]
    return f"{default:g}" if isinstance(default, float) else str(default)


class ConfigDefaults(TyperCommand):
    """A command whose options named like a ModelConfig/TrainConfig field, and left at None, show
    that field's default at the end of their help."""

    def format_options(self, ctx, formatter) -> None:
        defaults = config_defaults()
        for param in self.params:
            default = defaults.get(param.name)
            if param.default is None and default is not None and "[default:" not in (param.help or ""):
                param.help = f"{param.help} [default: {shown(default, param)}]"
        super().format_options(ctx, formatter)
