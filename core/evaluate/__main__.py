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
        status = jobs.read_status(main(load_plan(args.plan)))
        errors = status.get("metric_errors") or {}
        print(f"evaluation {status.get('state')}{' with errors' if errors else ''}: {status.get('message')}")
        for metric, why in errors.items():
            print(f"  {metric} failed: {why}")
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    cli()
