"""DPO beside SFT on one GPU at the "Lab 2 + DPO: Llama-3.2-1B" preset's settings: tokens/s and peak memory.

Run as: python bench/train_dpo.py [--steps 30] [--warmup 5] [--rows 2000] [--paths dpo-unsloth,dpo-plain,sft-unsloth,sft-plain]
                                  [--json OUT]                  (needs CUDA; requirements-gpu.txt for the unsloth paths)
        python bench/train_dpo.py --device cpu --steps 2       (smoke test: a 2-layer config, the plain paths)

Rows: synthetic preference pairs of FineTome-like lengths (Llama-3 tokens): a prompt (lognormal, median 120) and two
answers (lognormal, median 250 each, drawn apart), random ordinary-token ids, prompt + answer capped at 2048. DPO
gets them as core.train.dpo's tokenised columns (prompt_ids / chosen_ids / rejected_ids) through core.train.dpo's
trainer; SFT trains the same prompts + chosen answers (prompt masked) through core.train.backends' trainer.
Model: the Llama-3.2-1B architecture (core.models.LLAMA_CONFIGS), random weights, bf16, built once. Settings are the
presets' (LoRA r 16 on q,k,v,o,up,down, batch 2 × 4, max length 2048, adamw_8bit, gradient checkpointing; DPO:
beta 0.1, sigmoid loss, the base with the adapter off as the reference). Each path runs in its own process
(unsloth patches transformers globally):
  dpo-unsloth  DPO through unsloth (patched trl DPOTrainer)     dpo-plain  DPO through transformers + peft + trl
  sft-unsloth  SFT through unsloth at the lab's settings          sft-plain  SFT through transformers + peft + trl
Per path: real (non-padding) tokens/s of the micro-batches collated in the timed window (DPO: prompt + chosen and
prompt + rejected, both forward and backward, plus the reference forward, which is not counted again), pairs or
rows per second, padded tokens/s, peak allocated / reserved memory.
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
PATHS = {"dpo-unsloth": ("dpo", "unsloth"), "dpo-plain": ("dpo", "transformers"),
         "sft-unsloth": ("sft", "unsloth"), "sft-plain": ("sft", "transformers")}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def build_model(out: Path, device: str) -> Path:
    """Random-weight Llama-3.2-1B (bf16 on CUDA) or, for the CPU smoke test, a 2-layer one; + the Llama-3 tokenizer."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core import models
    from core.data import tokenizers

    arch = dict(models.LLAMA_CONFIGS[MODEL_ID])
    if device == "cpu":
        arch.update(TINY)
        arch.pop("head_dim", None)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**arch, dtype=str(dtype).split(".")[1])).to(dtype)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizers.llama3_dir()).save_pretrained(out)
    return out


def pairs(n: int, seq: int, seed: int = 0) -> list[dict]:
    """Synthetic tokenised pairs: FineTome-like prompt and answer lengths, random ordinary-token ids."""
    import numpy as np

    rng = np.random.default_rng(seed)
    eot = 128009  # <|eot_id|>: each answer ends the turn, as core.train.dpo.tokenise_pair writes it

    def draw(median: float, cap: int) -> list[int]:
        n_tok = int(min(cap, max(8, np.exp(rng.normal(np.log(median), 0.75)))))
        return rng.integers(1000, 120000, size=n_tok).tolist()

    out = []
    for _ in range(n):
        prompt = draw(120, seq // 2)
        out.append({"prompt_ids": prompt, "chosen_ids": draw(250, seq - len(prompt) - 1) + [eot],
                    "rejected_ids": draw(250, seq - len(prompt) - 1) + [eot]})
    return out


def configure(method: str, backend: str, steps: int, warmup: int, device: str):
    """The presets' settings: Lab 2 + DPO for DPO, Lab 2 for SFT (the same LoRA, batch and optimizer)."""
    from core.train.config import load_preset

    cfg = load_preset("Lab 2 + DPO: Llama-3.2-1B" if method == "dpo" else "Lab 2: Llama-3.2-1B on FineTome")
    cfg.backend, cfg.max_steps, cfg.save_steps, cfg.logging_steps = backend, warmup + steps, 10**6, 5
    cfg.assistant_only_loss, cfg.dataset = False, "bench"  # rows arrive tokenised with their prompt masked
    if device == "cpu":
        cfg.optimizer, cfg.gradient_checkpointing, cfg.max_seq_length = "adamw_torch", False, 256
        cfg.grad_accum = 1  # a smoke test: each step one micro-batch
    return cfg


def trainer_for(name: str, cfg, model_dir: Path, rows: list[dict], callbacks: list):
    method, backend = PATHS[name]
    from datasets import Dataset

    from core.train import backends, dpo

    model, tokenizer, peft_config = backends.load_model(cfg, model_dir, backend)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|finetune_right_pad_id|>"
    out = Path(f"/tmp/bench-{name}")
    if method == "dpo":
        kwargs = dict(model=model, ref_model=None, args=dpo.dpo_config(cfg, out, backend, False),
                      train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=callbacks)
        if peft_config is not None:
            kwargs["peft_config"] = peft_config
        return dpo.trainer_class(backend)(**kwargs), tokenizer
    sft = Dataset.from_dict({"input_ids": [r["prompt_ids"] + r["chosen_ids"] for r in rows],
                             "labels": [[-100] * len(r["prompt_ids"]) + r["chosen_ids"] for r in rows]})
    return backends.build_trainer(cfg, model, tokenizer, peft_config, sft, None, out, backend, callbacks), tokenizer


def run_path(name: str, model_dir: Path, rows: list[dict], steps: int, warmup: int, device: str) -> dict:
    """One timed training run in this process; returns its figures."""
    method, backend = PATHS[name]
    if backend == "unsloth":
        if method == "sft":
            os.environ["UNSLOTH_PADDING_CHOICE"] = "padded"  # the lab's padded batches, as bench/train_gpu.py
        import unsloth  # noqa: F401 - before trl
    import torch
    from transformers import TrainerCallback

    from core.train import throughput

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = configure(method, backend, steps, warmup, device)
    counts = {"real": 0, "padded": 0, "sequences": 0, "on": False}
    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warmup, warmup + steps):
                sync()
                marks[state.global_step] = time.perf_counter()
                counts["on"] = state.global_step == warmup

    trainer, tokenizer = trainer_for(name, cfg, model_dir, rows, [Clock()])
    inner = trainer.data_collator

    def counting(examples):
        batch = inner(examples)
        if counts["on"]:
            got = throughput.batch_tokens({**batch, "pad_token_id": tokenizer.pad_token_id})
            for k in ("real", "padded", "sequences"):
                counts[k] += got[k]
        return batch

    trainer.data_collator = counting
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = marks[warmup + steps] - marks[warmup]
    per_row = 2 if method == "dpo" else 1  # a DPO micro-batch row is a chosen and a rejected sequence
    return {"path": name, "method": method, "backend": backend, "batch_size": cfg.batch_size,
            "grad_accum": cfg.grad_accum, "gradient_checkpointing": cfg.gradient_checkpointing,
            "optimizer": cfg.optimizer, "beta": cfg.beta if method == "dpo" else None,
            "real_tps": counts["real"] / seconds, "padded_tps": counts["padded"] / seconds,
            "rows_per_s": counts["sequences"] / per_row / seconds, "steps_per_s": steps / seconds,
            "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
            "seconds": seconds, "device": torch.cuda.get_device_name(0) if cuda else "cpu"}


def print_table(results: list[dict], rows: list[dict], args) -> None:
    mean_pair = sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows) / len(rows)
    print(f"\nLlama-3.2-1B config ({'random weights' if args.device == 'cuda' else '2-layer smoke config'}), "
          f"{len(rows):,} synthetic pairs (mean {mean_pair:.0f} tokens per pair, both sequences); {args.steps} timed "
          f"steps after {args.warmup} warm-up on {results[0]['device'] if results else '?'}")
    print("| path | batch × accum | ckpt | optimizer | real tok/s | padded tok/s | pairs or rows /s | steps/s | "
          "peak alloc / reserved GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mem = f"{r['peak_alloc_gib']:.2f} / {r['peak_reserved_gib']:.2f}" if r["peak_alloc_gib"] is not None else "-"
        print(f"| {r['path']} | {r['batch_size']} × {r['grad_accum']} | {r['gradient_checkpointing']} | "
              f"{r['optimizer']} | {r['real_tps']:,.0f} | {r['padded_tps']:,.0f} | {r['rows_per_s']:.2f} | "
              f"{r['steps_per_s']:.3f} | {mem} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="pairs drawn (every path sees the same ones)")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per path")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--paths", default=None, help=f"subset of {', '.join(PATHS)} (default: all on cuda, "
                        "the plain ones on cpu)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke test on a 2-layer config")
    parser.add_argument("--model-dir", default=None, help="where the random model is built once")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # core.train.backends picks the CPU paths
    model_dir = Path(args.model_dir or f"/tmp/bench-dpo-llama-3.2-1b-{args.device}")
    rows = pairs(args.rows, 2048 if args.device == "cuda" else 256)
    if args.child:
        print("RESULT " + json.dumps(run_path(args.child, model_dir, rows, args.steps, args.warmup, args.device)),
              flush=True)
        return
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    build_model(model_dir, args.device)
    paths = args.paths or (",".join(PATHS) if args.device == "cuda" else "dpo-plain,sft-plain")
    results = []
    for name in paths.split(","):
        t = time.time()
        argv = [sys.executable, __file__, "--child", name, *sys.argv[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed (rc {proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1][7:]))
        print(f"{name}: done in {time.time() - t:.0f} s, {results[-1]['real_tps']:,.0f} real tok/s", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    print_table(results, rows, args)


if __name__ == "__main__":
    main()
