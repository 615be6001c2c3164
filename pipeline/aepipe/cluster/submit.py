"""aepipe submit: run a job spec (jobs/*.yaml) on a Ray cluster through Ray Jobs.

A spec holds exactly what Ray's JobSubmissionClient.submit_job takes (entrypoint, runtime_env,
metadata, entrypoint_num_cpus, ...) plus `params`, the defaults of the {placeholders} in its
entrypoint. Ray runs, places and logs the job; aepipe only fills in the spec and reports back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

from aepipe.cluster.ray_workarounds import job_agent_not_ready, job_message_without_logs
from aepipe.errors import AepipeError

# JobSubmissionClient.submit_job's keyword arguments a spec may hold (job_id is deprecated there)
FIELDS = ("entrypoint", "runtime_env", "metadata", "submission_id", "entrypoint_num_cpus", "entrypoint_num_gpus",
          "entrypoint_memory", "entrypoint_resources", "entrypoint_label_selector")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the job server of a `ray start --head` on this machine


def _yaml_value(text: str):
    """--set values are read as YAML scalars, so entrypoint_num_gpus=1 is a number, not "1"."""
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


SPEC_BYTES = 1 << 20  # a job spec is a page of YAML; more is not one
SPEC_VALUES = 10_000  # values in a spec once its YAML aliases are expanded (an alias bomb expands to 10^9)


def _kind(value) -> str:
    if value is None:
        return "nothing (an empty file)"
    return {list: "a list", str: "a single string"}.get(type(value), f"a single {type(value).__name__} value")


def _bounded(spec, path: str) -> None:
    """Refuse a spec that expands past SPEC_VALUES values: YAML aliases let a few lines stand for
    billions of values (or a cycle), which str(), json and Ray would try to expand."""
    stack, n = [spec], 0
    while stack:
        node = stack.pop()
        n += 1
        if n > SPEC_VALUES:
            raise AepipeError(f"{path}: the spec expands to more than {SPEC_VALUES:,} values (nested YAML "
                              "aliases, an alias bomb?); write its values out")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)


def _read(path: str) -> dict:
    import yaml

    try:
        with open(path, "rb") as f:  # at most SPEC_BYTES + 1: /dev/zero or a huge file is refused, not read
            raw = f.read(SPEC_BYTES + 1)
    except OSError as e:
        raise AepipeError(f"{path}: cannot read the job spec ({e.strerror or e})") from None
    if len(raw) > SPEC_BYTES:
        raise AepipeError(f"{path}: larger than {SPEC_BYTES >> 20} MiB; a job spec is a page of YAML")
    try:
        spec = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise AepipeError(f"{path}: not a text file (not UTF-8); a job spec is YAML") from None
    except yaml.YAMLError as e:
        raise AepipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise AepipeError(f"{path}: nested too deeply to be a job spec") from None
    if not isinstance(spec, dict):
        raise AepipeError(f'{path}: holds {_kind(spec)}, not a job spec: a YAML mapping with an "entrypoint" '
                          'command, e.g. "entrypoint: aepipe train {data} --out {run}"')
    _bounded(spec, path)
    if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
        raise AepipeError(f'{path}: a job spec is a YAML mapping with an "entrypoint" command, e.g. '
                          '"entrypoint: aepipe train {data} --out {run}"')
    unknown = sorted(set(spec) - set(FIELDS) - {"params"}, key=str)
    if unknown:
        raise AepipeError(f'{path}: unknown field "{unknown[0]}"; a spec holds params and '
                          f'{", ".join(FIELDS)}')
    if not isinstance(spec.get("params") or {}, dict):
        raise AepipeError(f"{path}: params must be a mapping of placeholder names to values")
    return spec


def _apply_set(spec: dict, params: dict, item: str, path: str) -> None:
    """key=value: a {placeholder} of the entrypoint, or a spec field (dotted for nested ones,
    e.g. runtime_env.env_vars.X=1)."""
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or not key:
        raise AepipeError(f'--set "{item}": expected key=value, e.g. --set data=s3://bucket/new.parquet')
    head, *rest = key.split(".")
    if head in FIELDS:
        node = spec
        for part in [head, *rest][:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise AepipeError(f'--set {key}: "{part}" is not a mapping in {path}')
        node[[head, *rest][-1]] = value if head == "entrypoint" else _yaml_value(value)
    elif key in params or key in PLACEHOLDER.findall(spec["entrypoint"]):
        params[key] = value
    else:
        names = sorted(set(PLACEHOLDER.findall(spec["entrypoint"])))
        raise AepipeError(f'--set {key}: not a placeholder of {path}\'s entrypoint ('
                          f'{", ".join(names) or "it has none"}) nor a spec field ({", ".join(FIELDS)})')


def _unquoted(entrypoint: str, path: str) -> None:
    """Each {placeholder} must stand outside quotes, as a word or part of one (--out={out}): it is
    filled in shell-quoted, and a quoted value inside "..." or '...' would be unquoted again, so
    $(...) or ; in a --set value would run. Refused, naming it."""
    quote, i = None, 0
    while i < len(entrypoint):
        c, m = entrypoint[i], PLACEHOLDER.match(entrypoint, i)
        escaped = c == "\\" and quote != "'"
        if escaped:
            m = PLACEHOLDER.match(entrypoint, i + 1)
        if m and (quote or escaped or entrypoint[i - 1:i] == "$"):
            where = f"inside {quote}...{quote}" if quote else "after \\" if escaped else "after $"
            raise AepipeError(f"{path}: the entrypoint's {{{m.group(1)}}} stands {where}; write it bare "
                              "(aepipe quotes each value it fills in, so a value is one argument, never a command)")
        if c in "'\"" and quote in (None, c):
            quote = None if quote else c
        i += 2 if escaped else 1


def load_spec(path: str, sets: list[str] | tuple = ()) -> dict:
    """The keyword arguments for submit_job: the spec with --set applied and every {placeholder}
    of the entrypoint filled in (shell-quoted, so a value with spaces, ; or $(...) stays one argument)."""
    spec = _read(path)
    params = {k: v for k, v in (spec.pop("params", None) or {}).items()}
    for item in sets:
        _apply_set(spec, params, item, path)
    _bounded([spec, params], path)  # a --set value is YAML too
    if not isinstance(spec["entrypoint"], str) or not spec["entrypoint"].strip():
        raise AepipeError(f"{path}: the entrypoint is empty; it is the command the job runs")
    if not isinstance(spec.get("metadata") or {}, dict):
        raise AepipeError(f"{path}: metadata must be a mapping of names to text, got {_kind(spec['metadata'])}")
    _unquoted(spec["entrypoint"], path)
    missing = [n for n in PLACEHOLDER.findall(spec["entrypoint"]) if n not in params]
    if missing:
        raise AepipeError(f"{path}: the entrypoint's {{{missing[0]}}} has no value; add it under params "
                          f"or give --set {missing[0]}=VALUE")
    spec["entrypoint"] = PLACEHOLDER.sub(lambda m: shlex.quote(str(params[m.group(1)])), spec["entrypoint"]).strip()
    # Ray keeps metadata as text only
    spec["metadata"] = {str(k): str(v) for k, v in (spec.get("metadata") or {}).items()}
    return spec


def job_server(address: str | None) -> str:
    """The job server's URL: --address, else RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS,
    else this machine's. The other commands' RAY_ADDRESS (HOST:6379) is the GCS, not the job server."""
    env = os.environ.get("RAY_ADDRESS", "")
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or (env if env.startswith("http") else "")
    address = (address or DEFAULT_ADDRESS).rstrip("/")
    return address if "://" in address else f"http://{address}"


def _auth_headers() -> dict:
    """The cluster's token as a Bearer header when RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) names it.
    Ray's client sends one by itself only under RAY_AUTH_MODE=token; this also covers a plain
    RAY_AUTH_TOKEN=... aepipe submit ..."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token and os.environ.get("RAY_AUTH_TOKEN_PATH"):
        try:
            token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser().read_text().strip()
        except OSError as e:
            raise AepipeError(f"RAY_AUTH_TOKEN_PATH {os.environ['RAY_AUTH_TOKEN_PATH']}: cannot read the token "
                              f"({e.strerror or e})") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refused(url: str, e: Exception) -> AepipeError:
    """Ray's AuthenticationError is a page of advice; the user needs one line of it."""
    if "Authentication failed" in str(e):  # 403: a token was sent, not the cluster's
        why = "the token given does not match the cluster's"
    else:  # 401: none was sent
        why = "it needs the cluster's token and none was given"
    return AepipeError(f"the job server at {url} refused the submit: {why}; set RAY_AUTH_TOKEN to the token "
                       "(the head's ~/.ray/auth_token, or `ray get-auth-token` there)")


def client(address: str | None):
    """A JobSubmissionClient for the job server, or one line saying why there is none."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = job_server(address)
    try:
        return JobSubmissionClient(url, headers=_auth_headers())
    except AuthenticationError as e:
        raise _refused(url, e) from None
    except (ConnectionError, OSError):
        raise AepipeError(f"cannot reach the Ray job server at {url}; is the head's dashboard running "
                          "(ray start --head, port 8265; `ray dashboard cluster.yaml` forwards it)?",
                          exit_code=1) from None


async def _follow(jobs, job_id: str) -> None:
    # Ray's client logs an INFO line of its own when the stream closes: not the job's output
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    async for lines in jobs.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def wait(jobs, job_id: str, url: str) -> None:
    """Stream the job's logs until it ends; its status decides aepipe's: SUCCEEDED returns,
    anything else is one line and exit 1. Ctrl-C stops following, not the job."""
    from ray.job_submission import JobStatus

    try:
        asyncio.run(_follow(jobs, job_id))
        # the log stream closes when the driver exits; the status settles a moment later
        while not (status := jobs.get_job_status(job_id)).is_terminal():
            asyncio.run(asyncio.sleep(0.5))
    except KeyboardInterrupt:
        raise AepipeError(f"stopped following; job {job_id} keeps running (ray job stop {job_id} "
                          f"--address {url} stops it)", exit_code=130) from None
    if status != JobStatus.SUCCEEDED:
        info = jobs.get_job_info(job_id)
        # Ray appends the log's tail to the message; it was streamed above already
        message = (info.message or "").strip().splitlines()[:1]
        message = [job_message_without_logs(m) for m in message]
        raise AepipeError(f"job {job_id} {status.value}" + (f": {message[0]}" if message else ""), exit_code=1)


AGENT_WAIT_S = 60  # a head just started answers HTTP before its job agent is up


def _submit_when_ready(jobs, kwargs: dict) -> str:
    """submit_job, retried while the head says its job agent is not up yet (a 500 "No available
    agent to submit job, please try again later" for some seconds after `ray start`)."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return jobs.submit_job(**kwargs)
        except RuntimeError as e:
            if not job_agent_not_ready(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def submit(spec_path: str, address: str | None = None, sets=(), follow: bool = False) -> str:
    """Submit the spec; print the job id; with follow, stream its logs and raise unless it SUCCEEDED."""
    from ray.exceptions import AuthenticationError

    kwargs = load_spec(spec_path, sets)  # a bad spec is refused before the cluster is asked
    url = job_server(address)
    jobs = client(address)
    try:
        job_id = _submit_when_ready(jobs, kwargs)
    except AuthenticationError as e:
        raise _refused(url, e) from None
    except RuntimeError as e:  # the job server's own refusal (bad runtime_env, a taken submission_id)
        raise AepipeError(f"the job server at {url} refused {spec_path}: {str(e).splitlines()[0]}") from None
    print(job_id, flush=True)
    if follow:
        wait(jobs, job_id, url)
    return job_id
