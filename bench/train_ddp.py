"""DDP scaling of a real Iris run: the same TrainConfig on one GPU, then on every visible GPU.

Run as: IRIS_HOME=/tmp/iris-ddp python bench/train_ddp.py [--steps 25]   (needs ≥ 2 CUDA GPUs)

Both runs go through core.train.lora.start, exactly as the Train page launches them: with one GPU visible
(CUDA_VISIBLE_DEVICES=0) a single process; with all of them, `accelerate launch` with one DDP process
per GPU. The backend is Iris's choice in both (`auto`: unsloth in every process when it imports, with packed
rows through varlen attention; status.json's backend_reason says which ran), with fill_card's batch, packing
and checkpointing per GPU; the model the Llama-3.2-1B architecture with random weights; rows whose token
lengths follow FineTome's (bench/train_gpu.py's length model). Tokens/s is the median of metrics.jsonl's
per-step figures after the first 5 steps: real (non-padding) tokens of all processes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_once(cfg, name: str, visible: str | None) -> dict:
    from core import jobs, runs
    from core.train import lora

    if visible is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    cfg.run_name = name
    t = time.time()
    run_dir = lora.start(cfg)
    status = jobs.wait(run_dir, timeout_s=500)
    tps = [m["tokens_per_s"] for m in runs.read_metrics(run_dir) if m.get("tokens_per_s") and m["step"] > 5]
    print(f"{name}: {status['state']} at step {status.get('step')} in {time.time() - t:.0f} s, "
          f"{status.get('processes')} process(es), backend {status.get('backend')} ({status.get('backend_reason')})",
          flush=True)
    if status["state"] != "completed":
        print(jobs.tail(run_dir / "train.log", 6000), flush=True)
    return {"processes": status.get("processes"), "tokens_per_s": sorted(tps)[len(tps) // 2] if tps else 0.0}


def finetome_lengths_version(name: str, rows: int) -> None:
    """A version of "repeat these words" chats whose token lengths follow FineTome's (one token per word)."""
    import numpy as np
    import pandas as pd

    from bench.train_gpu import row_lengths
    from core import versions

    if versions.exists(name):
        return
    rng = np.random.default_rng(0)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
    recs = []
    for n in row_lengths(rows, full=False, version=None):
        said = " ".join(rng.choice(words, size=max(4, n // 2 - 8)))
        recs.append({"messages": [{"role": "user", "content": f"Repeat exactly: {said}"},
                                  {"role": "assistant", "content": said}]})
    versions.save(name, pd.DataFrame(recs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    import torch

    from bench.train_gpu import build_model
    from core.paths import models_dir
    from core.train.config import load_preset
    from core.train.estimate import Device, fill_card

    model_dir = build_model(models_dir() / "llama-3.2-1b-random")
    finetome_lengths_version("finetome-lengths", rows=8000)
    cfg = load_preset("lab2_llama32_1b_finetome")
    cfg.base_model, cfg.dataset, cfg.max_steps, cfg.backend = str(model_dir), "finetome-lengths", args.steps, "auto"
    pick = fill_card(cfg, Device("cuda", 1, torch.cuda.get_device_properties(0).total_memory))
    cfg.batch_size, cfg.grad_accum = pick["batch_size"], 1
    cfg.packing, cfg.gradient_checkpointing = pick["packing"], pick["gradient_checkpointing"]
    cfg.save_steps, cfg.eval_steps = 10**6, 0
    stamp = int(time.time())
    one = run_once(cfg, f"ddp1-{stamp}", "0")
    many = run_once(cfg, f"ddpN-{stamp}", None)
    if one["tokens_per_s"]:
        print(f"\n1 GPU: {one['tokens_per_s']:,.0f} tok/s; {many['processes']} GPUs: {many['tokens_per_s']:,.0f} tok/s; "
              f"scaling {many['tokens_per_s'] / one['tokens_per_s']:.2f}× "
              f"({many['tokens_per_s'] / one['tokens_per_s'] / max(1, many['processes'] or 1):.0%} efficiency)")


if __name__ == "__main__":
    main()
