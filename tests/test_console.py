"""Only aepipe's own lines reach the console, and each command's last line is its summary.

Run through a pseudo-terminal's view: stdout and stderr merged in the order they were written,
with Ray's own processes (an embedded Ray, started by encode) free to print what they print."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # the installed command, an embedded Ray started by one of them

AEPIPE = str(Path(sys.executable).with_name("aepipe"))


def merged(*args) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AEPIPE_DEBUG")}
    proc = subprocess.run([AEPIPE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout
    return [line for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    w = tmp_path_factory.mktemp("console")
    lines = merged("train", "builtin:digits", "--epochs", "2", "--code-dim", "8", "--out", w / "run")
    assert lines[-1].startswith("trained dense (code 8)"), lines
    assert all(line.startswith(("fitting ", "epoch ", "trained ")) for line in lines), lines
    return w


@pytest.mark.parametrize("cmd, summary", [
    # on an embedded Ray, forced (auto would keep these rows in this process): its lines must not follow ours
    ("encode builtin:digits --model {w}/run --out {w}/c.zarr --engine ray", "encoded 1797 rows"),
    ("decode {w}/c.zarr --model {w}/run --out {w}/x.npy", "decoded 1797 rows"),
    ("score builtin:digits --model {w}/run --out {w}/s.parquet --engine local", "scored 1797 rows"),
    ("denoise builtin:digits --model {w}/run --out {w}/d.npy --engine local", "denoised 1797 rows"),
    ("info {w}/c.zarr --verify", None),
])
def test_last_line_is_the_summary(run, cmd, summary):
    lines = merged(*cmd.format(w=run).split())
    if summary:
        assert lines[-1].startswith(summary), "\n".join(lines)
    ray_noise = ("Dataset ", "execution finished", "repeated", "core_worker", "(raylet)", "INFO ", "WARNING ")
    assert not [line for line in lines if any(n in line for n in ray_noise)], "\n".join(lines)
