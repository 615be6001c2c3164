"""aepipe submit against a real Ray head started here (`ray start --head`, job server on loopback,
token auth on), in its own RAY_TMPDIR and process group so that it is stopped alone: never
`ray stop`, which would stop every Ray on the machine."""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from tests.conftest import AEPIPE

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NO_AUTH = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_head(proc: subprocess.Popen) -> None:
    """SIGKILL the head's process group and every process under it (Ray's workers start sessions of
    their own): a test head has nothing to save, and a graceful stop took 10 s."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)
    proc.wait()


@pytest.fixture(scope="module")
def job_server():
    """A one-node Ray head with token auth; yields (job server URL, token)."""
    # short: Ray's unix sockets live under it, and their paths may not exceed 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="aeh", dir="/tmp"))
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in NO_AUTH}
    # the job's entrypoint `aepipe ...` runs in the head's environment: this venv's bin on PATH
    env.update(RAY_TMPDIR=str(tmp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port=0", f"--dashboard-port={port}",
                             "--dashboard-host=127.0.0.1", "--num-cpus=2", "--include-dashboard=true", "--block",
                             # the node agent's ports: the defaults (52365, ...) are held by the test
                             # session's own Ray when it runs, and then no job agent answers
                             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"],
                            env=env, cwd=tmp, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:  # the job server answers (401 without the token) once the dashboard is up
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the Ray head did not start:\n" + (tmp / "head.log").read_text()[-3000:])
                time.sleep(1)
        yield url, token
    finally:
        stop_head(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def submit(*args, token=None):
    env = {k: v for k, v in os.environ.items() if k not in NO_AUTH}
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run([AEPIPE, "submit", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A tiny digits model, trained in this process's child without Ray (seconds)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    subprocess.run([AEPIPE, "train", "builtin:digits-train", "--family", "dense", "--code-dim", "4",
                    "--hidden", "16", "--epochs", "3", "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_submit_score_job_runs_to_succeeded(job_server, small_run, tmp_path):
    url, token = job_server
    out = tmp_path / "scores.parquet"
    proc = submit("jobs/score.yaml", "--address", url, "--wait", "--set", "data=builtin:digits-test",
                  "--set", f"model={small_run}", "--set", f"out={out}", token=token)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    job_id = proc.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "scored 540 rows" in proc.stdout  # the job's own log, streamed
    table = pq.read_table(out)
    assert table.num_rows == 540 and "anomaly" in table.column_names  # --threshold auto from the spec


@pytest.mark.slow
def test_failing_job_exits_non_zero(job_server, small_run, tmp_path):
    url, token = job_server
    out = tmp_path / "scores.parquet"
    proc = submit("jobs/score.yaml", "--address", url, "--wait", "--set", f"data={tmp_path}/missing.parquet",
                  "--set", f"model={small_run}", "--set", f"out={out}", token=token)
    assert proc.returncode == 1
    assert "missing.parquet" in proc.stdout  # the job's error line, from its log
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("aepipe: error: job raysubmit_") and "FAILED" in last and "exit code 2" in last
    assert not out.exists()


@pytest.mark.slow
def test_submit_without_the_token_is_refused_in_one_line(job_server):
    url, token = job_server
    for given, why in ((None, "none was given"), ("not-" + token, "does not match")):
        proc = submit("jobs/score.yaml", "--address", url, token=given)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aepipe: error:") and why in lines[0], proc.stderr
        assert proc.stdout == ""  # no job id: nothing was submitted


def test_bad_spec_and_unreachable_server(tmp_path):
    proc = submit("jobs/score.yaml", "--set", "colour=red", "--address", "http://127.0.0.1:9")
    assert proc.returncode == 2 and "not a placeholder" in proc.stderr  # refused before any connection
    proc = submit("jobs/score.yaml", "--address", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 1 and proc.stderr.startswith("aepipe: error: cannot reach the Ray job server")
    bad = tmp_path / "bad.yaml"
    bad.write_text("entrypoint: aepipe score {data}\nentrypoint_num_cpu: 1\n")
    proc = submit(bad)
    assert proc.returncode == 2 and 'unknown field "entrypoint_num_cpu"' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
