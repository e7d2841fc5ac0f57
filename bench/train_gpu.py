"""LoRA training speed on one GPU, measured on what users train: real (non-padding) tokens of real lengths.

Run as: python bench/train_gpu.py [--rows 4000] [--steps 30] [--warmup 5] [--paths plain-lab,unsloth-lab,iris,plain-iris]
                                  [--full-rows | --version NAME] [--json OUT]       (needs CUDA; requirements-gpu.txt)

Rows: random ordinary-token ids whose lengths follow FineTome-100k's (lognormal, median ≈ 350 Llama-3 tokens,
a 1.5% tail of 4k–12k tokens cut at 2048; the model of bench/data_pipeline.py), the first ~20% of each row
masked as its prompt (assistant-only loss); `--full-rows` makes every row 2048 tokens (the old benchmark);
`--version NAME` takes a saved dataset version's token lengths (its rows tokenised with the Llama-3 template).
Same rows and seed for every path. Model: the Llama-3.2-1B architecture, random weights, LoRA r=16 on
q,k,v,o,up,down, bf16. Paths, each in its own process (unsloth patches transformers globally):
  plain-lab    transformers + peft + trl at the lab's settings (2 × 4, padding, trl's checkpointing, adamw_8bit)
  unsloth-lab  unsloth at the lab's settings, padded batches (UNSLOTH_PADDING_CHOICE=padded)
  iris         Iris's choice: unsloth with what core.train.estimate.fill_card picks (packing, no checkpointing)
               and varlen flash attention for packed rows (core.train.kernels)
  plain-iris   transformers + peft + trl at Iris's settings (splits the gain into settings and kernels)
  iris-sdpa    Iris's choice with unsloth's own packed attention on this torch (one SDPA call per segment run)
  iris-32k / iris-64k / iris-sdpa-32k   the same with a 2× / 4× token budget per micro-batch (attempts)
Per path: real tok/s (attention masks / packed sequence positions of the micro-batches collated in the timed
window), padded tok/s, pad share, optimizer steps/s, conversations per step, peak allocated / reserved memory,
MFU as 4N + causal attention FLOPs per real token against 989e12 (6N beside it, labelled), and the implied
epoch time for 100k rows of this length distribution.
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
PATHS = {  # backend, lab settings?, token budget multiplier, varlen attention for packed rows (core.train.kernels)
    "plain-lab": ("transformers", True, 1, False), "unsloth-lab": ("unsloth", True, 1, False),
    "iris": ("unsloth", False, 1, True), "plain-iris": ("transformers", False, 1, False),
    "iris-sdpa": ("unsloth", False, 1, False), "iris-32k": ("unsloth", False, 2, True),
    "iris-64k": ("unsloth", False, 4, True), "iris-sdpa-32k": ("unsloth", False, 2, False),
}


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


def row_lengths(n: int, full: bool, version: str | None, seed: int = 0) -> list[int]:
    """Token lengths of the rows: FineTome-shaped, all SEQ, or a saved version's (tokenised here)."""
    import numpy as np

    if full:
        return [SEQ] * n
    if version:
        from transformers import AutoTokenizer

        from core.data import tokenizers
        from core.train.backends import set_training_template
        from core.train.tokens import RowSource

        tok = AutoTokenizer.from_pretrained(tokenizers.llama3_dir())
        set_training_template(tok, True)
        source = RowSource(version, "train", tok, SEQ, True)
        return [len(source.encode(i)[0]) for i in range(min(n, len(source)))]
    rng = np.random.default_rng(seed)
    tokens = np.exp(rng.normal(np.log(350), 0.75, n))
    tail = rng.random(n) < 0.015
    tokens[tail] = rng.uniform(4000, 12000, tail.sum())
    return [int(min(SEQ, max(16, t))) for t in tokens]


def token_rows(lengths: list[int], seed: int = 0):
    """Rows of random ordinary-token ids; the first ~20% of each is its prompt (label -100)."""
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for n in lengths:
        row = rng.integers(1000, 120000, size=n).tolist()
        prompt = max(1, n // 5)
        ids.append(row)
        labels.append([-100] * prompt + row[prompt:])
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def configure(name: str, steps: int, warmup: int):
    import torch

    from core.train.config import TrainConfig
    from core.train.estimate import Device, fill_card

    backend, lab, budget, _ = PATHS[name]
    cfg = TrainConfig(base_model=MODEL_ID, dataset="bench", max_seq_length=SEQ, batch_size=2, grad_accum=4,
                      optimizer="adamw_8bit", assistant_only_loss=False, max_steps=warmup + steps,
                      save_steps=10**6, logging_steps=5, backend=backend)
    if not lab:
        card = torch.cuda.get_device_properties(0).total_memory
        pick = fill_card(cfg, Device("cuda", 1, card, torch.cuda.get_device_name(0)), target_tokens=16384 * budget)
        cfg.batch_size, cfg.grad_accum = pick["batch_size"], pick["grad_accum"]
        cfg.packing, cfg.gradient_checkpointing = pick["packing"], pick["gradient_checkpointing"]
    return cfg


def run_path(name: str, model_dir: Path, lengths: list[int], steps: int, warmup: int) -> dict:
    """One timed training run in this process; returns its figures."""
    backend = PATHS[name][0]
    if backend == "unsloth":
        if PATHS[name][1]:
            os.environ["UNSLOTH_PADDING_CHOICE"] = "padded"  # the lab's padded batches
        import unsloth  # noqa: F401 - before trl
    varlen = "off"
    if PATHS[name][3]:
        from core.train.kernels import enable_packed_varlen

        varlen = enable_packed_varlen()
    import torch
    from transformers import TrainerCallback

    from core.models import LLAMA_CONFIGS
    from core.train import backends, throughput
    from core.train.estimate import count_params

    cfg = configure(name, steps, warmup)
    model, tokenizer, peft_config = backends.load_model(cfg, model_dir, backend)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|finetune_right_pad_id|>"
    rows = token_rows(lengths)
    counts = {"real": 0, "padded": 0, "sequences": 0, "on": False}

    class Clock(TrainerCallback):
        marks: dict = {}

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warmup, warmup + steps):
                torch.cuda.synchronize()
                self.marks[state.global_step] = time.perf_counter()
                counts["on"] = state.global_step == warmup

    trainer = backends.build_trainer(cfg, model, tokenizer, peft_config, rows, None, Path(f"/tmp/bench-{name}"),
                                     backend, [Clock()])
    inner, pad_id = trainer.data_collator, tokenizer.pad_token_id

    def counting(examples):
        batch = inner(examples)
        if counts["on"]:
            got = throughput.batch_tokens({**batch, "pad_token_id": pad_id})
            for k in ("real", "padded", "sequences"):
                counts[k] += got[k]
        return batch

    trainer.data_collator = counting
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = Clock.marks[warmup + steps] - Clock.marks[warmup]
    arch = LLAMA_CONFIGS[MODEL_ID]
    params = count_params(arch)
    real_tps, mean_doc = counts["real"] / seconds, counts["real"] / max(1, counts["sequences"])
    per_token = throughput.flops_per_token(params, arch["num_hidden_layers"], arch["hidden_size"], mean_doc)
    epoch_tokens = 100_000 * sum(lengths) / len(lengths)
    return {"path": name, "backend": backend, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
            "packing": cfg.packing, "gradient_checkpointing": cfg.gradient_checkpointing,
            "real_tps": real_tps, "padded_tps": counts["padded"] / seconds,
            "pad_share": 1 - counts["real"] / max(1, counts["padded"]), "steps_per_s": steps / seconds,
            "conversations_per_step": counts["sequences"] / steps, "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "mfu_4n_attn": real_tps * per_token / throughput.H100_PEAK, "mfu_6n": real_tps * 6 * params / throughput.H100_PEAK,
            "epoch_100k_min": epoch_tokens / real_tps / 60, "params": params, "seconds": seconds,
            "gpu": torch.cuda.get_device_name(0), "varlen": varlen}


def print_table(results: list[dict], lengths: list[int], args) -> None:
    base = next((r for r in results if r["path"] == "plain-lab"), None)
    shape = "full 2048-token rows" if args.full_rows else f"version {args.version}" if args.version else "FineTome-shaped rows"
    print(f"\nLlama-3.2-1B config, {shape}: {len(lengths):,} rows, mean {sum(lengths) / len(lengths):.0f} tokens, "
          f"{sum(x >= SEQ for x in lengths) / len(lengths):.1%} at the {SEQ} cap; {args.steps} timed steps after "
          f"{args.warmup} warm-up, on {results[0]['gpu'] if results else '?'}")
    print("| path | batch × accum | packing | ckpt | real tok/s | padded tok/s | pad share | steps/s | conv/step | "
          "peak alloc / reserved GiB | MFU 4N+attn (6N) | epoch of 100k rows | vs plain-lab |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['real_tps'] / base['real_tps']:.1f}×" if base else "-"
        print(f"| {r['path']} | {r['batch_size']} × {r['grad_accum']} | {r['packing']} | {r['gradient_checkpointing']} | "
              f"{r['real_tps']:,.0f} | {r['padded_tps']:,.0f} | {r['pad_share']:.0%} | {r['steps_per_s']:.2f} | "
              f"{r['conversations_per_step']:.1f} | {r['peak_alloc_gib']:.1f} / {r['peak_reserved_gib']:.1f} | "
              f"{r['mfu_4n_attn']:.1%} ({r['mfu_6n']:.1%} as 6N) | {r['epoch_100k_min']:.0f} min | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000, help="rows drawn (every path sees the same ones)")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per path")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--paths", default="plain-lab,unsloth-lab,iris,plain-iris", help=f"subset of {', '.join(PATHS)}")
    parser.add_argument("--full-rows", action="store_true", help="every row 2048 tokens (packing is a no-op)")
    parser.add_argument("--version", help="a saved dataset version's token lengths instead")
    parser.add_argument("--model-dir", default="/tmp/bench-llama-3.2-1b-random")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    model_dir = Path(args.model_dir)
    lengths = row_lengths(args.rows, args.full_rows, args.version)
    if args.child:
        print("RESULT " + json.dumps(run_path(args.child, model_dir, lengths, args.steps, args.warmup)), flush=True)
        return
    build_model(model_dir)
    results = []
    for name in args.paths.split(","):
        t = time.time()
        argv = [sys.executable, __file__, "--child", name, *sys.argv[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed (rc {proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1][7:]))
        print(f"{name}: done in {time.time() - t:.0f} s, {results[-1]['real_tps']:,.0f} real tok/s, "
              f"varlen {results[-1]['varlen']}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    print_table(results, lengths, args)


if __name__ == "__main__":
    main()
