"""`python -m aepipe.cli`: the installed command, run from a checkout."""

from aepipe.cli import console

if __name__ == "__main__":  # importing this module (as the package tests do) runs nothing
    console()
