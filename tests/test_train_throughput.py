"""Tokens a run trains on (real vs padded, packing on and off) and the estimate's use of a version's lengths."""
from __future__ import annotations

import pytest

from core.train import throughput
from core.train.estimate import Device, estimate
from tests.test_train import tiny_cfg, toy_version

LENGTHS = [5, 17, 9, 30, 12, 3, 22, 8, 14, 26, 6, 19]  # tokens per row, all under max_seq_length


def epoch_batches(model_dir, packing: bool) -> list[dict]:
    """Every micro-batch of one epoch, as the trainer's data loader collates it, counted by batch_tokens."""
    import numpy as np
    from datasets import Dataset

    from core.train import backends

    rng = np.random.default_rng(0)
    rows = [rng.integers(1000, 120000, size=n).tolist() for n in LENGTHS]
    ds = Dataset.from_dict({"input_ids": rows, "labels": rows})
    cfg = tiny_cfg(model_dir, packing=packing, batch_size=4, max_seq_length=64)
    model, tok, peft_config = backends.load_model(cfg, model_dir, "transformers")
    backends.set_training_template(tok, False)
    trainer = backends.build_trainer(cfg, model, tok, peft_config, ds, None, model_dir.parent / "out", "transformers",
                                     [])
    return [throughput.batch_tokens({**b, "pad_token_id": tok.pad_token_id}) for b in trainer.get_train_dataloader()]


def test_real_and_padded_tokens_with_and_without_packing(tiny_llama3_dir):
    padded = epoch_batches(tiny_llama3_dir, packing=False)
    assert sum(b["real"] for b in padded) == sum(LENGTHS) and sum(b["sequences"] for b in padded) == len(LENGTHS)
    assert sum(b["padded"] for b in padded) > sum(LENGTHS)  # each batch pads to its longest row
    assert all(b["sequences"] == 4 and b["padded"] % 4 == 0 and b["padded"] >= b["real"] for b in padded)

    packed = epoch_batches(tiny_llama3_dir, packing=True)
    assert sum(b["real"] for b in packed) == sum(LENGTHS) == sum(b["padded"] for b in packed)  # no pad at all
    assert sum(b["sequences"] for b in packed) == len(LENGTHS)  # conversations, counted by position restarts
    assert len(packed) < len(padded)


def test_epoch_tokens_pads_each_batch_to_its_longest_row():
    got = throughput.epoch_tokens([10, 2, 7, 50], max_len=40, batch_size=2, packing=False, seed=0)
    assert got["real"] == 10 + 2 + 7 + 40  # capped at max_len
    import random

    order = list(range(4))
    random.Random(0).shuffle(order)
    capped = [10, 2, 7, 40]
    want = sum(max(capped[j] for j in order[i:i + 2]) * 2 for i in (0, 2))
    assert got["padded"] == want and got["pad_share"] == pytest.approx(1 - 59 / want)
    assert throughput.epoch_tokens([10, 2, 7, 50], 40, 2, packing=True)["pad_share"] == 0


def test_the_gpu_estimate_follows_the_versions_length_distribution(tiny_llama3_dir):
    import pandas as pd

    from core import versions

    h200 = Device("cuda", 1, 141 * 1024**3, "NVIDIA H200")
    short = [{"messages": [{"role": "user", "content": "q" * 40}, {"role": "assistant", "content": "a" * 300}]}]
    long = [{"messages": [{"role": "user", "content": "q" * 400}, {"role": "assistant", "content": "a" * 6000}]}]
    versions.save("short", pd.DataFrame(short * 200))
    versions.save("long", pd.DataFrame(long * 200))
    cfg = dict(base_model="unsloth/Llama-3.2-1B-Instruct", max_steps=0, epochs=1.0, batch_size=8, grad_accum=1,
               packing=True, gradient_checkpointing=False, max_seq_length=2048)
    est_short = estimate(tiny_cfg(tiny_llama3_dir, dataset="short", **cfg), h200)
    est_long = estimate(tiny_cfg(tiny_llama3_dir, dataset="long", **cfg), h200)
    # real tokens per row differ ~16×; the estimate's training time follows the tokens, at the measured rate
    ratio = ((est_long.seconds - sum(est_long.parts["startup_s"].values()))
             / (est_short.seconds - sum(est_short.parts["startup_s"].values())))
    assert 12 < ratio < 20, ratio
    # packing tokenises every whole conversation before step 1: that follows the characters too (~16×)
    tokenising = est_long.parts["startup_s"]["tokenising"] / est_short.parts["startup_s"]["tokenising"]
    assert 14 < tokenising < 19, tokenising
    assert est_short.parts["real_tokens_per_s"] > est_long.parts["real_tokens_per_s"] > 0  # longer rows: more attention
    assert any("real tokens/s" in n and "one epoch" in n for n in est_short.notes)
    assert est_short.parts["startup_s"]["tokenising"] > 0  # packing tokenises every row before step 1
    toy_version()
    cpu = estimate(tiny_cfg(tiny_llama3_dir), Device("cpu", 1, 16 * 1024**3, "CPU", 2))
    assert cpu.parts["startup_s"]["tokenising"] == 0  # streaming: nothing before step 1
