"""Every place aepipe works around Ray, in one module: what each works around, the releases it was
measured on, and a guard that falls back to Ray's own behaviour where the internal it touches is
gone. tests/test_ray_workarounds.py fails when one of them no longer applies to the installed Ray.
Supported: Ray 2.58-2.60 (pyproject.toml); measured on 2.60.0 unless said otherwise.

No other module touches a private Ray name or matches Ray's wording."""

from __future__ import annotations

import contextlib
import os
import re

# Ray Train v2: every ray.train.report waits for the controller's next poll (default 2 s); 20 epoch
# reports took 54 s at the default and 15 s at 0.1 s. A documented setting (an environment variable).
TRAIN_POLL_S = "0.1"

# Ray Data's scheduling loop waits up to 0.1 s for any task to finish, and a finished task takes a
# step or two to be replaced: 130-210 ms of idle CPU between tasks of ~450 ms (ray-project/ray#42377,
# #45934). At 0.02 s the gaps were 30-50 ms and a 1M x 784 encode took 15.9 s instead of 18.0
# (0.005 s: the driver's own CPU use slowed the tasks; measured 2026-11-24 with ray.timeline()).
# Ray offers no setting for it: it is a module constant, read at every scheduling step.
DATA_WAIT_S = 0.02
_DATA_WAIT = ("ray.data._internal.execution.streaming_executor_state", "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S")


def train_env() -> dict:
    """Environment for the driver and every worker (Ray Train's controller poll)."""
    return {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)}


def shorten_data_wait() -> bool:
    """Ray Data's scheduling wait down to DATA_WAIT_S. Guard: a Ray that moved or renamed the
    constant keeps its own wait (a slower pipeline, nothing worse). Returns whether it applied."""
    import importlib

    module, name = _DATA_WAIT
    try:
        state = importlib.import_module(module)
    except ImportError:
        return False
    if not isinstance(getattr(state, name, None), (int, float)):
        return False
    setattr(state, name, DATA_WAIT_S)
    return True


# Ray's C++ core writes its log lines (actor restarts, leases, ...) straight to file descriptor 2,
# in glog's format; the command line drops lines of this form (runtime.quiet_native_logs) and passes
# everything else on. Ray's own setting, RAY_BACKEND_LOG_LEVEL, would also empty the log files
# under /tmp/ray that a person reads to debug a cluster; LoggingConfig covers Python's loggers only.
GLOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWE] \d+ \d+\] ")


# ---- signals: ray.init replaces the SIGTERM handler twice over, a driver's with a Python one that
# exits 15 (ray._private.worker's sigterm_handler) and, in the C++ core, absl's failure-signal
# handler (it prints "*** SIGTERM received at ..." and a stack). The command line handles SIGTERM as
# Ctrl-C (cancel the job, remove the partial, exit 130): its handler is put back after ray.init.
# Library callers keep whatever Ray installed.

@contextlib.contextmanager
def keeping_sigterm_handler():
    """Around ray.init: a Python SIGTERM handler set before (the command line's) is set again after."""
    import signal
    import threading

    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(before) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)


# ---- the processes an embedded Ray started: Ctrl-C and the end of a command stop them, and only them

_STARTED: list = []  # psutil.Process of each process ray.init started in this process (GCS, raylet, ...)


@contextlib.contextmanager
def recording_started_processes():
    """Around an embedded ray.init(): the child processes it starts are Ray's. Workers are the
    raylet's children, so everything Ray runs here lies under them; other children of this process
    (a notebook's, a caller's) are never among them."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children()}
    try:
        yield
    finally:
        _STARTED.extend(p for p in me.children() if p.pid not in before)


def stop_started_ray(wait: bool = True) -> None:
    """Kill the processes recorded above and everything under them, without ray.shutdown():
    shutting Ray down while a job thread is inside a Ray call can end this process from Ray's C++
    core (exit 1, nothing printed; seen once in CI), and took ~3 s after a finished job."""
    import psutil

    procs = []
    for p in _STARTED:
        with contextlib.suppress(psutil.Error):  # psutil refuses a pid that now names another process
            procs += [*p.children(recursive=True), p]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    if wait:
        psutil.wait_procs(procs, timeout=5)


# ---- Ray Jobs: its client raises a bare RuntimeError whose text is the only way to tell these apart

def job_agent_not_ready(e: Exception) -> bool:
    """A head just started answers HTTP before its job agent is up: a 500 "No available agent to
    submit job, please try again later" for some seconds after `ray start`."""
    return isinstance(e, RuntimeError) and "No available agent" in str(e)


def job_message_without_logs(message: str) -> str:
    """A failed job's message with the tail of its log that Ray appends (", last available logs ...")
    cut off: aepipe streamed the log already."""
    return message.split(", last available logs")[0]


# ---- what `ray up` checks of a cluster config (tests/test_cluster.py checks cluster.yaml with it)

def check_cluster_config(cfg: dict) -> bool:
    """Fill in defaults and check node types, bounds and docker as `ray up` does before it starts
    anything; raises ValueError on a bad config. Ray has no public API for it: returns False (the
    JSON schema, shipped as ray/autoscaler/ray-schema.json, is then the only check) if it moved."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:
        return False
    validate_config(prepare_config(cfg))
    return True
