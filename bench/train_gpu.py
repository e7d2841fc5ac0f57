"""LoRA training speed on one GPU: plain transformers+peft+trl vs unsloth vs Iris's own choice.

Run as: python bench/train_gpu.py [--steps 30] [--warmup 5]   (needs CUDA; see requirements-gpu.txt)

The Llama-3.2-1B architecture (core.models.LLAMA_CONFIGS) with random weights (speed does not depend on
the weight values), rows of exactly 2048 tokens, LoRA r=16 on the lab's projections, bf16:
  (1) plain    transformers + peft + trl SFTTrainer at the lab's settings (batch 2 × accum 4, trl's
               gradient checkpointing, adamw_8bit)
  (2) unsloth  FastLanguageModel at the lab's settings (its offloaded gradient checkpointing)
  (3) iris     unsloth with the batch size / packing / checkpointing that core.train.estimate.fill_card picks
               for this card (the pre-launch estimator's choice)
Each path runs in its own process (unsloth patches transformers globally). Printed per path: tokens/s
over the timed steps (after warm-up), peak allocated VRAM, MFU = 6 × params × tokens/s ÷ 790e12 (H100
bf16 dense peak), and the ratios to (1).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODEL_ID = "unsloth/Llama-3.2-1B-Instruct"
SEQ = 2048
PEAK_FLOPS = 790e12


def build_model(out: Path) -> Path:
    """Random-weight Llama-3.2-1B (bf16) + the Llama-3 tokenizer, saved once."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core import models
    from core.data import tokenizers

    arch = dict(models.LLAMA_CONFIGS[MODEL_ID])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**arch, dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizers.llama3_dir()).save_pretrained(out)
    return out


def token_rows(n: int, seed: int = 0):
    """`n` rows of SEQ random ordinary-token ids (trl takes pre-tokenized `input_ids` as is)."""
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    return Dataset.from_dict({"input_ids": rng.integers(1000, 120000, size=(n, SEQ)).tolist()})


def run_path(name: str, model_dir: Path, steps: int, warmup: int) -> dict:
    """One timed training run in this process; returns its figures."""
    from core.models import LLAMA_CONFIGS
    from core.train.config import TrainConfig
    from core.train.estimate import Device, count_params, fill_card

    cfg = TrainConfig(base_model=MODEL_ID, dataset="bench", max_seq_length=SEQ, batch_size=2, grad_accum=4,
                      optimizer="adamw_8bit", assistant_only_loss=False, max_steps=warmup + steps,
                      save_steps=10**6, logging_steps=5)
    use_unsloth = name != "plain"
    if use_unsloth:
        import unsloth  # noqa: F401 - before trl
    import torch
    from transformers import TrainerCallback

    from core.train import backends

    if name == "iris":
        card = torch.cuda.get_device_properties(0).total_memory
        pick = fill_card(cfg, Device("cuda", 1, card, torch.cuda.get_device_name(0)))
        cfg.batch_size, cfg.grad_accum = pick["batch_size"], pick["grad_accum"]
        cfg.packing, cfg.gradient_checkpointing = pick["packing"], pick["gradient_checkpointing"]
    cfg.max_steps = warmup + steps
    backend = "unsloth" if use_unsloth else "transformers"
    model, tokenizer, peft_config = backends.load_model(cfg, model_dir, backend)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|reserved_special_token_2|>"
    rows = token_rows(cfg.batch_size * cfg.grad_accum * cfg.max_steps + 8)

    class Clock(TrainerCallback):
        marks: dict = {}

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warmup, warmup + steps):
                torch.cuda.synchronize()
                self.marks[state.global_step] = time.perf_counter()

    clock = Clock()
    trainer = backends.build_trainer(cfg, model, tokenizer, peft_config, rows, None, Path(f"/tmp/bench-{name}"),
                                     backend, [clock])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = clock.marks[warmup + steps] - clock.marks[warmup]
    tokens = steps * cfg.batch_size * cfg.grad_accum * SEQ
    params = count_params(LLAMA_CONFIGS[MODEL_ID])
    tps = tokens / seconds
    return {"path": name, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "packing": cfg.packing,
            "gradient_checkpointing": cfg.gradient_checkpointing, "tokens_per_s": tps,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "mfu": 6 * params * tps / PEAK_FLOPS,
            "params": params, "timed_steps": steps, "seconds": seconds, "gpu": torch.cuda.get_device_name(0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per path")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--paths", default="plain,unsloth,iris", help="comma-separated subset")
    parser.add_argument("--model-dir", default="/tmp/bench-llama-3.2-1b-random")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    model_dir = Path(args.model_dir)
    if args.child:
        print("RESULT " + json.dumps(run_path(args.child, model_dir, args.steps, args.warmup)), flush=True)
        return
    build_model(model_dir)
    results = []
    for name in args.paths.split(","):
        t = time.time()
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                               "--warmup", str(args.warmup), "--model-dir", str(model_dir)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed (rc {proc.returncode})\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1][7:]))
        print(f"{name}: done in {time.time() - t:.0f} s", flush=True)
    base = next((r for r in results if r["path"] == "plain"), None)
    print(f"\nLlama-3.2-1B config ({results[0]['params'] / 1e9:.3f} B params), seq {SEQ}, LoRA r=16, bf16, "
          f"{args.steps} timed steps after {args.warmup} warm-up, on {results[0]['gpu'] if results else '?'}")
    print(f"{'path':8} {'batch×accum':>11} {'packing':>7} {'ckpt':>5} {'tokens/s':>10} {'peak GiB':>9} "
          f"{'MFU':>6} {'vs plain':>8}")
    for r in results:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}×" if base else "-"
        print(f"{r['path']:8} {r['batch_size']:>5}×{r['grad_accum']:<5} {str(r['packing']):>7} "
              f"{str(r['gradient_checkpointing']):>5} {r['tokens_per_s']:>10,.0f} {r['peak_gib']:>9.2f} "
              f"{r['mfu']:>6.1%} {ratio:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
