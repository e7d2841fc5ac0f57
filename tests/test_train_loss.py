"""CPU training's loss: the LM head over labelled positions only gives the model's own loss and gradients."""
from __future__ import annotations

import pytest

from core.train import loss as lm_loss
from tests.test_train import tiny_cfg, toy_version


def _lora_model(model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM", init_lora_weights=False))  # B ≠ 0: real grads
    return model


def _batch():
    """Two rows, the second right-padded, each with a masked prompt: 9 of the 24 positions carry a label."""
    import torch

    ids = torch.randint(5, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[0, :6] = -100
    labels[1, :4] = -100
    labels[1, 9:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("n_items", [None, 20])
def test_same_loss_and_gradients_as_the_models_own(tiny_llama3_dir, n_items):
    import torch

    model = _lora_model(tiny_llama3_dir)
    assert lm_loss.supports(model)
    batch = _batch()
    extra = {} if n_items is None else {"num_items_in_batch": torch.tensor(n_items)}
    own = model(**batch, **extra).loss
    own.backward()
    own_grads = _grads(model)
    model.zero_grad()
    ours = lm_loss.label_positions_loss(model, batch, extra.get("num_items_in_batch"))
    ours.backward()
    assert torch.allclose(ours, own, rtol=1e-5), (ours, own)
    for name, grad in _grads(model).items():
        # float rounding only: the head's matmul over fewer rows sums in another order
        assert (grad - own_grads[name]).norm() <= 1e-5 * own_grads[name].norm(), name


def test_cpu_training_projects_only_labelled_positions(tiny_llama3_dir, monkeypatch):
    """A real 4-step run on CPU goes through the label-only head: the LM head sees each labelled token once."""
    real, seen = lm_loss.label_positions_loss, {"rows": 0, "labelled": 0, "tokens": 0}

    def counted(model, inputs, n_items=None):
        head = lm_loss._causal_lm(model).lm_head
        hook = head.register_forward_hook(lambda mod, args, out: seen.update(rows=seen["rows"] + args[0].shape[0]))
        try:
            seen["labelled"] += int((inputs["labels"][..., 1:] != -100).sum())
            seen["tokens"] += inputs["labels"].numel()
            return real(model, inputs, n_items)
        finally:
            hook.remove()

    monkeypatch.setattr(lm_loss, "label_positions_loss", counted)
    toy_version()
    from core import runs
    from core.train import lora

    run_dir = lora.main(tiny_cfg(tiny_llama3_dir, eval_steps=0, save_steps=4))
    assert [m["step"] for m in runs.read_metrics(run_dir) if "loss" in m] == [1, 2, 3, 4]
    assert seen["rows"] == seen["labelled"] > 0
    assert seen["labelled"] < seen["tokens"] / 2  # the prompts and the padding never reach the head
