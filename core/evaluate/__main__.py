"""Run an evaluation plan (resumable): answers, then optional held-out loss and automatic judge.

Run as: python -m core.evaluate PLAN.yaml
"""
from __future__ import annotations

import argparse

from core import jobs
from core.errors import IrisError, cli_exit
from core.evaluate.job import main
from core.evaluate.plan import load_plan


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description="Run an Iris evaluation plan (resumable).")
    parser.add_argument("plan", help="path to the plan's YAML (an EvalPlan); answers go to IRIS_HOME/evals/<name>/")
    args = parser.parse_args(argv)
    try:
        folder = main(load_plan(args.plan))
        print(f"evaluation {jobs.read_status(folder).get('state')}: {folder}")
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    cli()
