"""CUDA only (skipped elsewhere; `make test` runs them on a GPU machine): unsloth trains packed rows through
varlen attention, and 4-bit loading works."""
from __future__ import annotations

import pytest

from core import jobs, runs
from core.train import lora
from tests.test_train import tiny_cfg, toy_version


def cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


pytestmark = pytest.mark.skipif(not cuda(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("four_bit", [False, True])
def test_unsloth_trains_packed_rows_with_varlen_attention(tiny_llama3_dir, four_bit):
    toy_version(rows=64, eval_rows=0)
    run_dir = lora.main(tiny_cfg(tiny_llama3_dir, run_name=f"cuda-{four_bit}", packing=True, eval_steps=0,
                                 gradient_checkpointing=False, load_in_4bit=four_bit, backend="unsloth"))
    status = jobs.read_status(run_dir)
    assert status["state"] == "completed" and status["backend"] == "unsloth", status
    assert "packed attention on" in status["backend_reason"] or "already" in status["backend_reason"], status
    losses = [m["loss"] for m in runs.read_metrics(run_dir) if "loss" in m]
    assert len(losses) == 4 and all(x == x for x in losses)  # no NaN
    assert (runs.adapter_dir(run_dir) / "adapter_model.safetensors").exists()
