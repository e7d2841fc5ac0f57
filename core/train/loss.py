"""Causal-LM loss with the LM head applied only where a label is (CPU training).

The model's own loss projects every position onto the vocabulary (SmolLM2: 49,152 columns; Llama-3: 128,256)
and then ignores the positions whose label is -100: the prompt turns under assistant-only loss, and padding.
On CPU that head is ~21% of a SmolLM2 step's FLOPs and its softmax is memory-bound, so Iris runs the decoder,
keeps the hidden states of the labelled positions and projects only those. The loss is the same cross-entropy
with the same normalisation (a sum over labelled tokens divided by the accumulation's token count when the
Trainer passes `num_items_in_batch`, else their mean); gradients are the same up to float rounding.

Used for plain causal LMs whose logits are exactly `lm_head(final hidden state)` (no soft-capping or scaling)
in a single process; anything else keeps the model's own loss (`supports`).
"""
from __future__ import annotations

# Architectures whose forward computes logits as lm_head(norm(decoder output)) and nothing more.
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "phi3"}


def supports(model) -> bool:
    """True when `model` (a plain or peft-wrapped causal LM, not a DDP wrapper) can use `label_positions_loss`."""
    causal = _causal_lm(model)
    return (causal is not None and getattr(causal.config, "model_type", None) in PLAIN_HEAD
            and hasattr(causal, "model") and hasattr(causal, "lm_head"))


def _causal_lm(model):
    if hasattr(model, "get_base_model"):  # peft: its LoRA layers live inside the base model's modules
        model = model.get_base_model()
    return model if hasattr(model, "config") else None


def label_positions_loss(model, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss of `inputs` (input_ids, labels, attention_mask / position_ids as the collator gives)
    computed with the LM head over labelled positions only."""
    import torch.nn.functional as F
    from transformers.loss.loss_utils import fixed_cross_entropy

    causal = _causal_lm(model)
    labels = inputs["labels"]
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = causal.model(**forward, use_cache=False).last_hidden_state  # (batch, tokens, hidden), normed
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:]  # position t predicts token t + 1
    keep = shifted != -100
    logits = causal.lm_head(hidden[keep]).float()  # (labelled tokens, vocab)
    # the reduction the model's own loss uses (ForCausalLMLoss): mean, or sum / num_items_in_batch
    return fixed_cross_entropy(logits, shifted[keep], num_items_in_batch)
