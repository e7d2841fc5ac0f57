"""Does the GGUF behave like the model it came from? Next-token agreement on a fixed prompt set.

Each prompt is rendered with the model's chat template and tokenized once (transformers); the same
token ids go through the reference (the merged 16-bit model, loaded in fp32 by transformers) and
through each GGUF (llama-cpp-python with `logits_all`). At every position we compare the next-token
distributions: top-1 agreement (same argmax) and the Pearson correlation of the logit vectors.
A faithful q8_0 agrees on nearly every position; q4_k_m drifts a little; a broken export (wrong
tokenizer, transposed weights, lost adapter) falls to chance.
"""
from __future__ import annotations

from pathlib import Path

from core.export.config import QUANT_TABLE, VERIFY_MEANING

# Short, varied, fixed: chat, reasoning, code, a list, non-English. Changing them changes every report.
PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that returns the square of a number.",
    "List three fruits that are red.",
    "If I have 3 apples and eat one, how many are left?",
    "Translate 'good morning' into Spanish.",
    "Give me a synonym for 'happy'.",
    "Wie spät ist es, wenn es Mittag ist?",
]


def prompt_ids(model_dir: Path) -> list[list[int]]:
    """The fixed prompts as token ids, through the model's own chat template (plain text without one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for text in PROMPTS:
        if tok.chat_template:
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        else:
            ids = tok(text)["input_ids"]
        out.append([int(i) for i in ids])
    return out


def reference_logits(model_dir: Path, prompts: list[list[int]], adapter_dir: Path | None = None) -> list:
    """fp32 logits (positions × vocab) per prompt from transformers (base + adapter when given)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            out.append(model(torch.tensor([ids])).logits[0].float().numpy())
    del model
    return out


def gguf_logits(gguf: Path, prompts: list[list[int]], lora: Path | None = None, threads: int | None = None) -> list:
    """Logits per prompt from llama-cpp-python, fed the very same token ids."""
    import numpy as np
    from llama_cpp import Llama

    n_ctx = max(len(p) for p in prompts) + 8
    llm = Llama(model_path=str(gguf), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=n_ctx,
                n_batch=n_ctx, n_threads=threads, verbose=False)
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    del llm
    return out


def compare(reference: list, candidate: list) -> dict:
    """Top-1 agreement and mean Pearson correlation of logits over every position of every prompt."""
    import numpy as np

    agree, corr, n = 0, [], 0
    for ref, got in zip(reference, candidate):
        vocab = min(ref.shape[1], got.shape[1])  # GGUF may pad the vocab; compare the common part
        ref, got = ref[:, :vocab], got[:, :vocab]
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        n += ref.shape[0]
        r = ref - ref.mean(1, keepdims=True)
        g = got - got.mean(1, keepdims=True)
        corr.extend((r * g).sum(1) / np.sqrt((r * r).sum(1) * (g * g).sum(1) + 1e-12))
    return {"top1_agreement": round(agree / n, 4), "logit_correlation": round(float(np.mean(corr)), 4),
            "positions": n}


def verify(reference_dir: Path, ggufs: dict[str, Path], adapter_dir: Path | None = None,
           lora: Path | None = None, threads: int | None = None) -> dict:
    """{"prompts": n, "quants": {quant: {top1_agreement, logit_correlation, positions}}}.

    `adapter_dir`: the reference is base + this peft adapter (LoRA-only exports, whose GGUFs get
    `lora` applied by llama.cpp); otherwise `reference_dir` is the merged model itself.
    """
    prompts = prompt_ids(reference_dir if adapter_dir is None or not (adapter_dir / "tokenizer_config.json").exists()
                         else adapter_dir)
    reference = reference_logits(reference_dir, prompts, adapter_dir)
    results = {quant: judged(quant, compare(reference, gguf_logits(path, prompts, lora, threads)))
               for quant, path in ggufs.items()}
    return {"prompts": len(prompts), "reference": "transformers fp32", "quants": results, "meaning": VERIFY_MEANING}


def judged(quant: str, numbers: dict) -> dict:
    """`numbers` + verdict (pass / warn / fail) + why, against the quant table's thresholds."""
    q = QUANT_TABLE[quant]
    verdict, why = q.verdict(numbers["top1_agreement"], numbers["logit_correlation"])
    return {**numbers, "verdict": verdict, "why": why,
            "thresholds": {"pass_top1": q.pass_top1, "pass_corr": q.pass_corr, "warn_top1": q.warn_top1,
                           "warn_corr": q.warn_corr}}
