"""LoRA fine-tuning runs that live in their own directory and survive stops, kills and restarts.

Run as:
    python -m core.train CONFIG.yaml                          # a new run (IRIS_HOME/runs/<run_name>/)
    python -m core.train --resume RUN_DIR [--checkpoint N]    # continue from the latest (or step N) checkpoint
    python -m core.train --warm                               # wait, libraries imported, for a Launch's run
    python -m core.train CONFIG.yaml --hosts H1,H2 --gpus-per-host 8
        # writes RUN_DIR/launch/: an accelerate config per host and torchrun.sh (one line per host); start each
        # host's line on that host (the run directory on a filesystem every host shares, at the same path)
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from core import jobs
from core.config import load_yaml
from core.errors import IrisError, cli_exit
from core.runs import CONFIG, run_path
from core.train.config import TrainConfig
from core.train.lora import is_main_process, main, prepare_cluster, resume_run

# The job never uses scikit-learn, but transformers imports it (and scipy.stats with it) whenever it is installed,
# for assisted generation's roc_curve: ~2.5 s of CPU in a start whose imports take ~15 s. None in sys.modules makes
# importlib's find_spec answer "not installed", so transformers leaves it out. (Another installed package, not Iris,
# brings scikit-learn into the environment.)
sys.modules.setdefault("sklearn", None)


def _terminated(signum, frame):
    """torchrun/accelerate end the other ranks with SIGTERM when one dies: fail the run instead of vanishing."""
    raise SystemExit(f"ended by signal {signum} (another process of this run failed, or the job was stopped)")


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.train", description="Iris LoRA fine-tuning")
    parser.add_argument("config", nargs="?", help="TrainConfig YAML (a preset, or a run's config.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run (or a mirror of it)")
    parser.add_argument("--checkpoint", type=int, metavar="N", help="resume from checkpoint-N, not the latest")
    parser.add_argument("--hosts", metavar="H1,H2", help="write launch files for these hosts (first = rank 0), "
                        "do not train here")
    parser.add_argument("--gpus-per-host", type=int, default=1, metavar="G", help="DDP processes per host")
    parser.add_argument("--warm", action="store_true", help="import the libraries, then wait for a Launch to hand "
                        "this process its run (core.train.launch.serve_warm; the Train page starts these)")
    args = parser.parse_args(argv)
    if args.warm:
        from core.train.launch import serve_warm

        handed = serve_warm()
        if handed is None:
            return
        args = parser.parse_args(handed)
    run_dir = None
    try:
        if args.hosts:
            if not args.config:
                parser.error("--hosts needs a CONFIG.yaml")
            run_dir, files = prepare_cluster(load_yaml(TrainConfig, Path(args.config)), args.hosts.split(","),
                                             args.gpus_per_host)
            print("\n".join(str(f) for f in files))
            print((run_dir / "launch" / "torchrun.sh").read_text())
            return
        if args.resume:
            run_dir = Path(args.resume)
            out = resume_run(run_dir, args.checkpoint)
        elif args.config:
            cfg = load_yaml(TrainConfig, Path(args.config)).with_run_name()
            run_dir = run_path(cfg.run_name)
            own = Path(args.config).resolve() == (run_dir / CONFIG).resolve()  # launched by start()
            if not own and run_dir.exists():
                raise IrisError(f"a run named {cfg.run_name!r} already exists: resume it or choose another name.")
            out = main(cfg, run_dir)
        else:
            parser.error("give a CONFIG.yaml, or --resume RUN_DIR")
        print(f"run: {out}")
    except BaseException as err:
        if run_dir is not None and (run_dir / CONFIG).exists() and is_main_process() and not args.hosts:
            jobs.mark_failed(run_dir, err)
        if isinstance(err, IrisError):
            cli_exit(err)
        raise


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    cli()
