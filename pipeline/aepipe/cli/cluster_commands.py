"""The command that hands work to a Ray cluster: submit, a job spec through Ray Jobs."""

from __future__ import annotations

from typing import Optional

import typer

from aepipe.cli.output import call
from aepipe.cluster.submit import submit as submit_fn


def submit(
    jobspec: str = typer.Argument(..., help="A job spec, e.g. jobs/train.yaml: submit_job's fields plus params."),
    address: Optional[str] = typer.Option(None, "--address", help="The cluster's job server, e.g. http://HEAD:8265 "
                                          "(default: RAY_API_SERVER_ADDRESS, an http:// RAY_ADDRESS, else "
                                          "http://127.0.0.1:8265)."),
    wait: bool = typer.Option(False, "--wait", help="Stream the job's logs and exit with its status: 0 if it "
                                                    "SUCCEEDED, 1 if it FAILED or was STOPPED."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="NAME=VALUE", help="NAME=VALUE: fill the entrypoint's {NAME} "
                                             "(default: the spec's params), or replace a field, dotted for "
                                             "nested ones (entrypoint_num_gpus=1, runtime_env.env_vars.X=1). "
                                             "Repeat for more."),
):
    """Run a job spec on a Ray cluster through Ray Jobs; prints the job id.

    \b
      ray up cluster.yaml && ray dashboard cluster.yaml       # job server on localhost:8265
      aepipe submit jobs/train.yaml --set data=s3://bucket/t.parquet --wait
      aepipe submit jobs/encode_nightly.yaml --address http://head:8265

    A cluster with token auth (RAY_AUTH_MODE=token, as cluster.yaml starts it) takes the submit only
    with its token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file holding it). Scheduling is
    cron's or Kubernetes' job: see jobs/crontab and jobs/rayjob.yaml.
    """

    call(submit_fn, jobspec, address, sets=set_ or (), follow=wait)
