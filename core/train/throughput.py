"""Tokens a run really trains on, and how fast a GPU trains them: what `bench/train_gpu.py` measures and
the Train page's estimate uses.

- `batch_tokens`: real (non-padding) and padded tokens and conversations in one collated micro-batch, for
  padded batches (attention_mask) and packed / padding-free ones (position_ids restart at 0 per conversation).
- `epoch_tokens`: real and padded tokens of one epoch for a version's token lengths, batched the way the
  trainer batches them (the seed's shuffled order, padded to each micro-batch's longest row) or packed.
- `cuda_rate`: expected real tokens/s on a GPU from the MFU the benchmark measured for that path, counted
  as 4N + attention FLOPs per token (LoRA freezes the base: forward 2N + activation gradients 2N; causal
  attention 6 · layers · hidden · length per token, forward and backward) against the card's dense bf16 peak.
"""
from __future__ import annotations

import random

H100_PEAK = 989e12  # dense bf16 FLOP/s, H100/H200 datasheet

# MFU (4N + attention, vs H100_PEAK) measured by bench/train_gpu.py on one H200 on 2026-11-29 (Llama-3.2-1B config,
# LoRA r=16, FineTome-shaped rows, mean 472 tokens), per (backend, packing, gradient checkpointing); the real tok/s
# each gave is beside it. See bench/train_gpu_results.md.
MEASURED_MFU = {
    ("transformers", False, True): 0.014,   # plain trl, lab settings (2 × 4, padding): 2,705 real tok/s
    ("unsloth", False, True): 0.025,        # unsloth, lab settings, padded: 4,842
    ("transformers", True, False): 0.074,   # plain trl at Iris's settings (packing, 8 × 2048): 14,561
    ("unsloth", True, False): 0.353,        # Iris's choice (packing, varlen attention, 16 × 2048): 69,399
}
DEFAULT_MFU = 0.10
# Iris's token budget per micro-batch on a GPU (fill_card's target, packed rows of max_seq_length): 32k tokens
# gave 69.4k real tok/s vs 64.5k at 16k (49.5 vs 26.0 GiB); 64k fitted no larger batch on the H200.
TOKEN_BUDGET = 32768


def batch_tokens(batch: dict) -> dict:
    """{'real', 'padded', 'sequences'} of one collated micro-batch (tensors as the trainer's collator makes)."""
    ids = batch["input_ids"]
    padded = int(ids.numel())
    if "attention_mask" in batch and batch["attention_mask"] is not None:
        mask = batch["attention_mask"]
        return {"real": int(mask.sum()), "padded": padded, "sequences": int(ids.shape[0])}
    pos = batch.get("position_ids")
    if pos is None:
        return {"real": padded, "padded": padded, "sequences": int(ids.shape[0])}
    # padding-free: conversations are concatenated, each restarting its positions at 0; trailing pad (if the
    # collator pads to a multiple) repeats position 0 with the pad id, so count real tokens by what follows a start
    starts = (pos == 0)
    real = padded
    pad_id = batch.get("pad_token_id")
    if pad_id is not None:
        real = int((~(starts & (ids == pad_id))).sum())
    return {"real": real, "padded": padded, "sequences": int(starts.sum())}


def epoch_tokens(lengths: list[int], max_len: int, batch_size: int, packing: bool, seed: int = 0) -> dict:
    """Real and padded tokens of one pass over rows of these token lengths (capped at max_len)."""
    capped = [min(int(x), max_len) for x in lengths]
    real = sum(capped)
    if packing or not capped:
        return {"real": real, "padded": real, "rows": len(capped), "pad_share": 0.0}
    order = list(range(len(capped)))
    random.Random(seed).shuffle(order)
    padded = 0
    for i in range(0, len(order), batch_size):
        chunk = [capped[j] for j in order[i:i + batch_size]]
        padded += max(chunk) * len(chunk)
    return {"real": real, "padded": padded, "rows": len(capped), "pad_share": 1 - real / padded if padded else 0.0}


def flops_per_token(params: int, layers: int, hidden: int, mean_len: float) -> float:
    """4N + causal attention (6 · layers · hidden · mean length) FLOPs per trained token (LoRA: frozen base)."""
    return 4 * params + 6 * layers * hidden * mean_len


def cuda_rate(params: int, arch: dict, mean_len: float, backend: str, packing: bool, checkpointing: bool,
              gpus: int = 1) -> float:
    """Expected real tokens/s on `gpus` H100/H200-class cards for this path, from the measured MFU."""
    mfu = MEASURED_MFU.get((backend, packing, checkpointing), DEFAULT_MFU)
    per_token = flops_per_token(params, arch["num_hidden_layers"], arch["hidden_size"], mean_len)
    return mfu * H100_PEAK * gpus / per_token


def version_lengths(dataset: str, max_len: int, sample: int = 5000) -> list[int]:
    """Token lengths of a version's train rows: exact from a token cache of it when one exists (any run that
    tokenised it at this max length), else ≈ characters / 3.6 over an even sample of up to `sample` rows."""
    import json

    import pyarrow.parquet as pq

    from core import versions
    from core.train.tokens import cache_root

    for meta in sorted(cache_root().glob("*/meta.json")) if cache_root().exists() else []:
        info = json.loads(meta.read_text())
        if (info.get("dataset"), info.get("split"), info.get("max_length")) == (dataset, "train", max_len):
            parts = sorted(meta.parent.glob("part-*.parquet"))
            lengths = [len(x) for p in parts for x in pq.read_table(p, columns=["input_ids"]).column(0).to_pylist()]
            if len(lengths) >= min(sample, info.get("rows", 0)):
                return lengths
    df = versions.load(dataset)
    step = max(1, len(df) // sample)
    return [max(1, int(sum(len(str(m.get("content") or "")) + 8 for m in msgs) / 3.6))
            for msgs in df["messages"].iloc[::step]]


# Conversation tokens (estimated from characters, core.train.estimate.CHARS_PER_TOKEN) tokenised per second on one
# core of this 2-core machine: a whole FineTome-shaped version (98,000 rows, mean 2,686 characters, SmolLM2's
# tokenizer) took 444 s, 221 rows/s; 304 rows/s when quiet (75% of it in tokenizers' encode). Every row costs its
# whole conversation, however much of it max_seq_length keeps. A GPU host's cores: ~2.3× (a guess, not measured).
TOKENISED_PER_S = 180_000.0


def startup_seconds(cfg, device_kind: str, rows: int, model_ready: bool, cached: bool, warm: str = "",
                    mean_tokens: float = 750.0) -> dict:
    """Seconds before step 1, per phase: importing torch/transformers, preparing the embedded model once,
    loading, and tokenising every row first when packing (rows already in the token cache cost nothing;
    `mean_tokens`: the version's mean conversation length). Measured on 2 busy cores: imports ~10 s,
    materialising SmolLM2 ~30 s. `warm`: "" (a new Python), "imports" (a warm process is ready:
    core.train.launch) or "model" (one that has also loaded this run's base model): bench/train_start.py
    measures ~0.1 s and ~0.5 s for those phases."""
    rate = TOKENISED_PER_S * (1.0 if device_kind == "cpu" else 2.3)
    return {"importing libraries": 0.0 if warm else 10.0, "preparing base model": 0.0 if model_ready else 30.0,
            "loading model": 0.5 if warm == "model" else 5.0,
            "tokenising": 0.0 if (cached or not cfg.packing) else rows * mean_tokens / rate}


def cuda_seconds(cfg, arch: dict, params: int, lengths: list[int], rows: int, processes: int,
                 backend: str) -> dict:
    """Expected real tok/s and training time on the GPU(s) for this version's length distribution."""
    sample = epoch_tokens(lengths, cfg.max_seq_length, cfg.batch_size, cfg.packing, cfg.seed)
    mean_len = sample["real"] / max(1, sample["rows"])
    tps = cuda_rate(params, arch, mean_len, backend, cfg.packing, cfg.gradient_checkpointing, processes)
    epoch_real = mean_len * rows
    if cfg.max_steps:  # conversations a run reads: steps × batch × accum × processes
        real = min(1.0, cfg.max_steps * cfg.effective_batch * processes / max(1, rows)) * epoch_real
        if cfg.max_steps * cfg.effective_batch * processes > rows:
            real = cfg.max_steps * cfg.effective_batch * processes * mean_len
    else:
        real = epoch_real * cfg.epochs
    return {"real_tokens_per_s": tps, "seconds": real / tps, "epoch_seconds": epoch_real / tps,
            "pad_share": sample["pad_share"], "mean_tokens": mean_len}
