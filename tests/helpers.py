"""Tiny real models for tests: a few-layer Llama with a real tokenizer, random weights, seeded."""
from __future__ import annotations

from pathlib import Path


def make_tiny_llama(out: Path, tokenizer: str = "llama-3", hidden: int = 64, layers: int = 2,
                    intermediate: int = 128, heads: int = 4, kv_heads: int = 2, seed: int = 0,
                    tie_embeddings: bool = True, init_std: float = 0.02) -> Path:
    """Save a random-weight LlamaForCausalLM + tokenizer (+ chat template) into `out`.

    `tokenizer` is 'llama-3' (the real 128k Llama-3 vocab, rebuilt offline) or 'smollm2' (49k).
    With tied embeddings and small weights the model mostly repeats its last input token; untied,
    with a larger `init_std` (e.g. 0.3), it writes varied tokens with clear winners (greedy is stable).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core import models
    from core.data import tokenizers

    tok_dir = tokenizers.llama3_dir() if tokenizer == "llama-3" else models.materialise_embedded()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie_embeddings, initializer_range=init_std, dtype="float32",
    )
    model = LlamaForCausalLM(config)
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
