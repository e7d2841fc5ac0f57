"""End-to-end check of a real run on a GPU: launch, graceful stop, resume, and resume from the mirror.

Run as: IRIS_HOME=/tmp/iris-gpu python bench/train_gpu_e2e.py [--steps 30]

Everything goes through the same calls the Train page makes (core.train.lora.start / resume, core.jobs
request_stop / wait), so the job runs as its own subprocess with the backend it picks itself (unsloth
when CUDA is there and it imports). The base model is the Llama-3.2-1B architecture with random weights,
the data a synthetic "repeat these words" version. Prints what happened and fails loudly if the step
count or the loss curve did not continue.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def synthetic_version(name: str, rows: int = 400, max_words: int = 300) -> None:
    import numpy as np
    import pandas as pd

    from core import versions

    if versions.exists(name):
        return
    rng = np.random.default_rng(0)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
    recs = []
    for _ in range(rows):
        said = " ".join(rng.choice(words, size=int(rng.integers(20, max_words))))
        recs.append({"messages": [{"role": "user", "content": f"Repeat exactly: {said}"},
                                  {"role": "assistant", "content": said}]})
    df = pd.DataFrame(recs)
    versions.save(name, df.iloc[20:].reset_index(drop=True), eval_df=df.iloc[:20].reset_index(drop=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--stop-at", type=int, default=13, help="request a graceful stop once this step is done")
    args = parser.parse_args()
    from bench.train_gpu import build_model
    from core import jobs, runs
    from core.paths import models_dir
    from core.train import lora
    from core.train.config import load_preset

    model_dir = build_model(models_dir() / "llama-3.2-1b-random")
    synthetic_version("repeat-words")
    mirror = Path("/tmp/iris-gpu-mirror")
    cfg = load_preset("lab2_llama32_1b_finetome")
    cfg.base_model, cfg.dataset, cfg.max_steps, cfg.eval_steps = str(model_dir), "repeat-words", args.steps, 10
    cfg.mirror_dir, cfg.run_name = str(mirror), f"gpu-e2e-{int(time.time())}"
    t0 = time.time()
    run_dir = lora.start(cfg)
    print(f"launched {run_dir.name}: {jobs.read_status(run_dir).get('launched_argv')}", flush=True)
    while True:
        status = jobs.read_status(run_dir)
        if status.get("state") in jobs.FINAL or (status.get("step") or 0) >= args.stop_at:
            break
        time.sleep(0.5)
    jobs.request_stop(run_dir)
    status = jobs.wait(run_dir, timeout_s=400)
    print(f"stop: state {status['state']} at step {status.get('step')} after {time.time() - t0:.0f} s; "
          f"checkpoints {runs.list_checkpoints(run_dir)}; backend {status.get('backend')}", flush=True)
    assert status["state"] == "stopped", (status, jobs.tail(run_dir / "train.log"))
    t1 = time.time()
    lora.resume(run_dir)
    status = jobs.wait(run_dir, timeout_s=400)
    metrics = runs.read_metrics(run_dir)
    steps = [m["step"] for m in metrics if "loss" in m]
    print(f"resume: state {status['state']} at step {status.get('step')} after {time.time() - t1:.0f} s; "
          f"checkpoints {runs.list_checkpoints(run_dir)}; adapter {sorted(p.name for p in (run_dir / 'adapter').glob('*'))}",
          flush=True)
    assert status["state"] == "completed" and status["step"] == args.steps, (status, jobs.tail(run_dir / "train.log"))
    assert steps == list(range(1, args.steps + 1)), steps
    losses = [round(m["loss"], 3) for m in metrics if "loss" in m]
    evals = [(m["step"], round(m["eval_loss"], 3)) for m in metrics if "eval_loss" in m]
    tps = [m.get("tokens_per_s") for m in metrics if m.get("tokens_per_s")]
    print(f"loss curve {losses}\neval {evals}\ntokens/s (median) {sorted(tps)[len(tps) // 2] if tps else 0:,.0f}", flush=True)
    print(f"mirror: {sorted(p.name for p in (mirror / run_dir.name / 'checkpoints').iterdir())}", flush=True)
    # A fresh machine: only the mirror is left; resume from its checkpoint-20.
    shutil.move(str(run_dir), f"/tmp/{run_dir.name}-local")
    t2 = time.time()
    proc = subprocess.run([sys.executable, "-m", "core.train", "--resume", str(mirror / run_dir.name),
                           "--checkpoint", "20"], cwd=REPO, capture_output=True, text=True)
    status = jobs.read_status(run_dir)
    print(f"resume from mirror: rc {proc.returncode}, state {status.get('state')} at step {status.get('step')} "
          f"after {time.time() - t2:.0f} s", flush=True)
    if proc.returncode:
        print(proc.stdout[-2000:], proc.stderr[-4000:])
    print(f"train.log tail:\n{jobs.tail(run_dir / 'train.log', 1500)}")
    print(json.dumps({"e2e": "ok" if proc.returncode == 0 else "mirror-resume-failed"}))


if __name__ == "__main__":
    main()
