"""DDP scaling of a real Iris run: the same TrainConfig on one GPU, then on every visible GPU.

Run as: IRIS_HOME=/tmp/iris-ddp python bench/train_ddp.py [--steps 25]   (needs ≥ 2 CUDA GPUs)

Both runs go through core.train.lora.start, exactly as the Train page launches them: with one GPU visible
(CUDA_VISIBLE_DEVICES=0) a single process; with all of them, `accelerate launch` with one DDP process
per GPU. The backend is transformers+peft+trl in both (unsloth trains single-process only in Iris), the
model the Llama-3.2-1B architecture with random weights, rows packed to 2048 tokens, batch 8 per GPU.
Tokens/s is the median of metrics.jsonl's per-step figures after the first 5 steps (all processes).
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
          f"{status.get('processes')} process(es)", flush=True)
    if status["state"] != "completed":
        print(jobs.tail(run_dir / "train.log", 6000), flush=True)
    return {"processes": status.get("processes"), "tokens_per_s": sorted(tps)[len(tps) // 2] if tps else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    from bench.train_gpu import build_model
    from bench.train_gpu_e2e import synthetic_version
    from core.paths import models_dir
    from core.train.config import load_preset

    model_dir = build_model(models_dir() / "llama-3.2-1b-random")
    synthetic_version("repeat-words-big", rows=4000, max_words=700)
    cfg = load_preset("lab2_llama32_1b_finetome")
    cfg.base_model, cfg.dataset, cfg.max_steps = str(model_dir), "repeat-words-big", args.steps
    cfg.backend, cfg.packing, cfg.batch_size, cfg.grad_accum = "transformers", True, 8, 1
    cfg.gradient_checkpointing, cfg.save_steps, cfg.eval_steps = False, 10**6, 0
    stamp = int(time.time())
    one = run_once(cfg, f"ddp1-{stamp}", "0")
    many = run_once(cfg, f"ddpN-{stamp}", None)
    if one["tokens_per_s"]:
        print(f"\n1 GPU: {one['tokens_per_s']:,.0f} tok/s; {many['processes']} GPUs: {many['tokens_per_s']:,.0f} tok/s; "
              f"scaling {many['tokens_per_s'] / one['tokens_per_s']:.2f}× "
              f"({many['tokens_per_s'] / one['tokens_per_s'] / max(1, many['processes'] or 1):.0%} efficiency)")


if __name__ == "__main__":
    main()
