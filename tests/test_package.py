"""The package as a whole: every module imports on its own, and the command's entry point is
callable in-process."""

import importlib
import pkgutil

import pytest

import pipeline
from pipeline.cli import main

MODULES = sorted(m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline."))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


def test_main_returns_exit_codes_in_process(capsys, tmp_path):
    """main(argv) -> int: 0 on success, 2 on a usage mistake or bad input, one error line each."""
    assert main(["--help"]) == 0 and "aepipe train builtin:digits" in capsys.readouterr().out
    assert main(["encodee"]) == 2
    assert capsys.readouterr().err.startswith("aepipe: error: No such command")
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aepipe: error:") and "no such file" in err and err.count("\n") == 1
