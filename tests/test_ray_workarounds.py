"""Each workaround of Ray (aepipe.cluster.ray_workarounds) still applies to the installed Ray, and no other
module touches Ray's private names; Ctrl-C stops only the processes an embedded Ray started."""

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aepipe.cluster import ray_workarounds as rw

ROOT = Path(__file__).parents[1]


def test_ray_data_still_has_the_scheduling_wait_aepipe_shortens():
    """Fails on a Ray that renamed or moved the constant: the workaround would be a silent no-op."""
    module, name = rw._DATA_WAIT
    state = importlib.import_module(module)
    before = getattr(state, name)  # (this session's Ray may have shortened it already)
    default = re.search(rf"^{name}\s*=\s*([\d.]+)", inspect.getsource(state), re.M)
    assert default and float(default.group(1)) > rw.DATA_WAIT_S  # Ray's own wait: still one worth shortening
    try:
        assert rw.shorten_data_wait() and getattr(state, name) == rw.DATA_WAIT_S
    finally:
        setattr(state, name, before)


def test_the_guard_falls_back_when_the_constant_is_gone(monkeypatch):
    module = rw._DATA_WAIT[0]
    monkeypatch.setattr(rw, "_DATA_WAIT", ("ray.data.no_such_module", "WAIT"))
    assert rw.shorten_data_wait() is False
    monkeypatch.setattr(rw, "_DATA_WAIT", (module, "NO_SUCH_CONSTANT"))
    assert rw.shorten_data_wait() is False


def test_ray_jobs_wording_that_aepipe_recognises():
    assert rw.job_agent_not_ready(RuntimeError("Request failed with status code 500: No available agent to submit "
                                               "job, please try again later."))
    assert not rw.job_agent_not_ready(RuntimeError("Request failed with status code 400: bad entrypoint"))
    assert rw.job_message_without_logs("Job entrypoint command failed with exit code 2, last available logs "
                                       "(truncated to 20,000 chars):\n...") == "Job entrypoint command failed with exit code 2"


def test_glog_lines_are_recognised_and_nothing_else():
    assert rw.GLOG_LINE.match(b"[2026-11-24 10:01:02,345 W 1234 5678] core_worker.cc:123: lease ...\n")
    assert not rw.GLOG_LINE.match(b"aepipe: error: no such file\n")
    assert not rw.GLOG_LINE.match(b"Traceback (most recent call last):\n")


def private_ray_names(path: Path) -> list[str]:
    """Imports of a private Ray module, and dotted names through one (ray._private..., ray.x._y)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [n for n in names if n.split(".")[0] == "ray" and any(p.startswith("_") for p in n.split("."))]
    text = path.read_text()
    found += re.findall(r"\bray(?:\.[A-Za-z]\w*)*\._[A-Za-z]\w*", text)
    return found


def test_no_module_but_the_workaround_module_touches_a_private_ray_name():
    files = [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    offenders = {str(f.relative_to(ROOT)): private_ray_names(f) for f in files
                 if f.name not in ("ray_workarounds.py", "test_ray_workarounds.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert private_ray_names(ROOT / "pipeline" / "aepipe" / "cluster" / "ray_workarounds.py")  # the check sees them


SIBLING = """
import os, signal, subprocess, sys, threading, time
sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # the caller's own child
from aepipe.cluster.runtime import Interrupted, init_ray, run_interruptibly
from aepipe.cluster import ray_workarounds as rw
import ray
init_ray(num_cpus=1)
started = list(rw._STARTED)
assert started and sibling.pid not in [p.pid for p in started]
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()  # Ctrl-C, as a notebook's stop
try:
    run_interruptibly(ray.get, ray.remote(lambda: time.sleep(60)).remote())
except Interrupted:
    pass
time.sleep(0.5)
print("sibling alive:", sibling.poll() is None)
print("ray's processes left:", sum(p.is_running() and p.status() != "zombie" for p in started))
sibling.kill()
os._exit(0)
"""


@pytest.mark.e2e  # it starts an embedded Ray of its own, in a child process
def test_an_interrupted_library_call_stops_ray_and_leaves_a_sibling_alive():
    import os
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="rw", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": tmp}
    try:
        proc = subprocess.run([sys.executable, "-c", SIBLING], capture_output=True, text=True, timeout=180, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sibling alive: True" in proc.stdout and "ray's processes left: 0" in proc.stdout, proc.stdout


def test_the_command_lines_sigterm_handler_survives_what_ray_init_sets():
    import signal

    def ours(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, ours)
    try:
        with rw.keeping_sigterm_handler():
            signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))  # what ray.init installs for a driver
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)
