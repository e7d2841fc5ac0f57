"""Held-out loss and perplexity of a model on a dataset version's eval split, no human needed.

Each conversation (canonical `messages`) is rendered with the model's own chat template — only the template's
structure as control tokens, message text as plain text, as training tokenises it (`core.inference.chat_tokens`)
— and scored
token by token: loss = mean negative log-likelihood (nats per token) over every token after the
first, pooled over all rows; perplexity = exp(loss). Lower is better; compare models only on the
same dataset version, and across tokenizers with care (a bigger vocabulary means fewer, harder tokens).

Backends: transformers for HF folders and run adapters (peft), llama-cpp-python logits for GGUF.
Results of an evaluation plan go to `IRIS_HOME/evals/<plan>/metrics.jsonl`, one line per model.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from core.errors import IrisError

MAX_TOKENS = 512  # per conversation; longer ones are cut (keeps logits ≤ 512 × vocab floats in RAM)
METRICS = "metrics.jsonl"


def heldout_rows(dataset: str, limit: int) -> list[list[dict]]:
    """The first `limit` conversations of a version's eval split, as lists of {role, content}."""
    from core import versions

    df = versions.load(dataset, "eval")
    rows = [r["messages"] for r in versions.to_records(df.head(int(limit)))]
    rows = [[{"role": m["role"], "content": m["content"]} for m in msgs] for msgs in rows if msgs]
    if not rows:
        raise IrisError(f"dataset version {dataset!r} has an empty eval split: save it with eval rows.")
    return rows


def _summary(nll_sum: float, tokens: int, rows: int, backend: str, seconds: float) -> dict:
    if tokens == 0:
        raise IrisError("no tokens to score: the held-out conversations are empty.")
    loss = nll_sum / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens, "rows": rows,
            "backend": backend, "seconds": round(seconds, 2)}


def hf_perplexity(model_dir: str | Path, conversations: list[list[dict]], adapter: str | Path | None = None,
                  max_tokens: int = MAX_TOKENS) -> dict:
    """Loss/perplexity with transformers (fp32 CPU); `adapter` puts a peft LoRA on the model first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.inference.chat_tokens import tokenize_chat

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(adapter or model_dir)
    if not tokenizer.chat_template:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    nll_sum, tokens = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            ids = torch.tensor([tokenize_chat(tokenizer, messages, add_generation_prompt=False)[:max_tokens]])
            if ids.shape[1] < 2:
                continue
            logits = model(input_ids=ids).logits[0, :-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            nll_sum += -logprobs.gather(1, ids[0, 1:, None]).sum().item()
            tokens += ids.shape[1] - 1
    return _summary(nll_sum, tokens, len(conversations), "transformers", time.perf_counter() - started)


def _render_gguf_template(llm, messages: list[dict]) -> str:
    """Render with the chat template stored in the GGUF (as transformers renders its own)."""
    from core.templates import TemplateRefused, render_template

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise IrisError("this GGUF has no chat template in its metadata, so its held-out loss cannot be computed.")

    def token(key: str) -> str:
        tid = llm.metadata.get(key)
        return llm.detokenize([int(tid)], special=True).decode("utf-8", "replace") if tid is not None else ""

    try:
        return render_template(template, messages, bos_token=token("tokenizer.ggml.bos_token_id"),
                               eos_token=token("tokenizer.ggml.eos_token_id"))
    except TemplateRefused as err:
        raise IrisError(f"the model's chat template refused the conversation: {err}") from None


def gguf_perplexity(gguf_path: str | Path, conversations: list[list[dict]], max_tokens: int = MAX_TOKENS,
                    lora: str | Path | None = None) -> dict:
    """Loss/perplexity from llama.cpp's logits for every position of each conversation; `lora` is a LoRA
    GGUF applied at load (a LoRA-only export: without it the base model would be measured)."""
    import numpy as np
    from llama_cpp import Llama

    from core.inference.chat_tokens import protect, tokenize_protected
    from core.inference.engine import cpu_threads
    from core.inference.engine_gguf import _control_tokens
    from core.inference.threads import FIRST_WINDOW_S, CoreShare

    started = time.perf_counter()
    threads = cpu_threads()
    llm = Llama(str(gguf_path), lora_path=str(lora) if lora else None, n_ctx=max_tokens, n_batch=max_tokens,
                logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)
    share = CoreShare(threads)  # the cores other processes leave free, looked at before each conversation
    nll_sum, tokens = 0.0, 0
    specials = _control_tokens(llm)

    def plain(text: str) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    try:
        for messages in conversations:  # message text stays text: only the template's structure is control tokens
            text = _render_gguf_template(llm, protect(messages, specials))
            ids = tokenize_protected(text, specials, plain)[:max_tokens]
            if len(ids) < 2:
                continue
            llm.reset()
            n = share.threads(FIRST_WINDOW_S)
            llm._ctx.set_n_threads(n, n)
            llm.eval(ids)
            logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            nll_sum += -logprobs[np.arange(len(ids) - 1), ids[1:]].sum()
            tokens += len(ids) - 1
    finally:
        llm.close()
    return _summary(float(nll_sum), tokens, len(conversations), "llama.cpp", time.perf_counter() - started)


def model_perplexity(model, conversations: list[list[dict]], max_tokens: int = MAX_TOKENS) -> dict:
    """Dispatch on a ChatModel's kind: 'gguf', 'hf' or 'adapter' (on its base)."""
    if model.kind == "gguf":
        return gguf_perplexity(model.path, conversations, max_tokens, lora=model.lora or None)
    if model.kind == "adapter":
        from core import models

        return hf_perplexity(models.resolve(model.base), conversations, adapter=model.path, max_tokens=max_tokens)
    return hf_perplexity(model.path, conversations, max_tokens=max_tokens)


def evaluate_models(folder: Path, plan, available: dict) -> list[dict]:
    """Held-out metrics for each plan model not yet measured on this dataset/row count (resumable).

    A model that fails (a template llama.cpp cannot render, too little RAM) does not stop the others;
    once they are measured, one IrisError names every model that failed and why."""
    from core.paths import append_jsonl, read_jsonl

    conversations = heldout_rows(plan.heldout_dataset, plan.heldout_rows)
    done = {(r["model"], r["dataset"], r["rows"]) for r in read_jsonl(Path(folder) / METRICS)}
    out, failed = [], []
    for model_id in plan.models:
        if (model_id, plan.heldout_dataset, len(conversations)) in done:
            continue
        try:
            measured = model_perplexity(available[model_id], conversations)
        except Exception as err:  # recorded per model; the caller decides what a failed metric means
            why = " ".join((str(err) if isinstance(err, IrisError) else f"{type(err).__name__}: {err}").split())
            failed.append(f"{model_id} ({why})")
            print(f"held-out {model_id} failed: {why}", flush=True)
            continue
        result = {"model": model_id, "dataset": plan.heldout_dataset, **measured, "created": time.time()}
        result["rows"] = len(conversations)
        append_jsonl(Path(folder) / METRICS, result)
        print(f"held-out {model_id}: loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}", flush=True)
        out.append(result)
    if failed:
        raise IrisError(f"held-out loss failed for {'; '.join(failed)}"
                        + (f"; measured {len(out)} other model(s)." if out else "."))
    return out


def read_metrics(folder: Path) -> list[dict]:
    from core.paths import read_jsonl

    latest = {}
    for rec in read_jsonl(Path(folder) / METRICS):
        latest[rec["model"]] = rec
    return list(latest.values())
