"""cluster.yaml and jobs/: valid for the tools that read them (Ray's cluster launcher, Ray Jobs,
KubeRay, cron), and every entrypoint a command line that `aepipe` itself accepts."""

import copy
import json
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import typer
import yaml

from aepipe import AepipeError
from aepipe.cli import app
from aepipe.cluster.ray_workarounds import check_cluster_config
from aepipe.cluster.submit import FIELDS, load_spec

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
SPECS = sorted(p for p in JOBS.glob("*.yaml") if p.name != "rayjob.yaml")


def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_ray_up():
    cfg = cluster_config()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    # what `ray up` runs: defaults filled in, then node types, bounds and docker checked
    assert check_cluster_config(copy.deepcopy(cfg))
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the head runs drivers, not tasks
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"] and t["node_config"]["InstanceType"].startswith("g")]
    assert gpu and all(t["min_workers"] < t["max_workers"] for t in gpu)  # GPU workers autoscale
    assert any("pip install" in c and "aepipe" in c for c in cfg["setup_commands"])


def test_cluster_yaml_check_catches_a_broken_config():
    """The check above has teeth: an unknown head type and a bad field are both refused."""
    cfg = cluster_config()
    cfg["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        check_cluster_config(cfg)
    cfg = cluster_config()
    cfg["max_worker"] = 3  # typo: the schema allows no unknown fields
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, schema)


def check_aepipe_command(line: str) -> None:
    """Parse an entrypoint with aepipe's own command line (nothing runs): an unknown command or
    option, or a missing required one, raises click's UsageError."""
    args = shlex.split(line)
    assert args[0] == "aepipe", line
    group = typer.main.get_command(app)
    sub = group.commands.get(args[1])
    assert sub is not None, f"aepipe has no command {args[1]}: {line}"
    sub.make_context(args[1], args[2:])


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_job_specs_resolve_to_aepipe_commands(spec):
    raw = yaml.safe_load(spec.read_text())
    assert set(raw) <= set(FIELDS) | {"params"}
    assert "entrypoint_num_cpus" in raw and "entrypoint_num_gpus" in raw and raw["metadata"]
    kwargs = load_spec(str(spec))
    assert kwargs["entrypoint"].startswith("aepipe ") and "{" not in kwargs["entrypoint"]
    check_aepipe_command(kwargs["entrypoint"])


def test_set_fills_placeholders_and_fields():
    kwargs = load_spec(str(JOBS / "train.yaml"), ["data=my data.parquet", "entrypoint_num_gpus=1",
                                                  "runtime_env.env_vars.X=7", "workers=2"])
    args = shlex.split(kwargs["entrypoint"])
    assert args[2] == "my data.parquet" and args[args.index("--workers") + 1] == "2"
    assert kwargs["entrypoint_num_gpus"] == 1 and kwargs["runtime_env"]["env_vars"]["X"] == 7
    with pytest.raises(AepipeError, match="not a placeholder"):
        load_spec(str(JOBS / "train.yaml"), ["dta=x"])
    with pytest.raises(AepipeError, match="expected key=value"):
        load_spec(str(JOBS / "train.yaml"), ["data"])


def supported_ray(version: str) -> bool:
    """Whether pyproject.toml's Ray requirement admits `version`."""
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_req = next(Requirement(d) for d in deps if Requirement(d).name == "ray")
    return ray_req.specifier.contains(version)


def test_the_installed_ray_is_in_the_supported_range():
    assert supported_ray(ray.__version__) and not supported_ray("2.57.1") and not supported_ray("2.61.0")


def test_rayjob_manifest_runs_an_aepipe_command():
    docs = list(yaml.safe_load_all((JOBS / "rayjob.yaml").read_text()))
    assert len(docs) == 1
    job = docs[0]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    check_aepipe_command(spec["entrypoint"])
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    cluster = spec["rayClusterSpec"]
    # the cluster's Ray is one aepipe supports, and the one cluster.yaml's image runs
    image = yaml.safe_load((ROOT / "cluster.yaml").read_text())["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{cluster['rayVersion']}-")
    assert supported_ray(cluster["rayVersion"])
    workers = cluster["workerGroupSpecs"]
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for w in workers for c in w["template"]["spec"]["containers"])


def test_crontab_lines_submit_existing_specs():
    jobs = 0
    for line in (JOBS / "crontab").read_text().splitlines():
        if not line.strip() or line.startswith("#") or "=" in line.split()[0]:
            continue  # comments, and VAR=value lines cron puts in each job's environment
        fields = line.split(None, 5)
        assert len(fields) == 6, line  # minute hour day month weekday command
        for f in fields[:5]:
            assert all(c.isdigit() or c in "*/,-" for c in f), line
        command = fields[5].split("&&")[-1].split(">>")[0]
        args = shlex.split(command.replace("\\%", "%"))
        i = args.index("submit")
        assert args[i - 1].endswith("aepipe") and (ROOT / args[i + 1]).is_file(), line
        assert "--wait" in args  # cron's exit status is then the job's
        jobs += 1
    assert jobs >= 2
