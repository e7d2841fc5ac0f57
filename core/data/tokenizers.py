"""Tokenizers by model id, offline: the Llama-3 tokenizer rebuilt from llama.cpp's vocab GGUF.

The real Llama-3 (and 3.2) tokenizer is what the lab's length filter and chat template need, and
the hub is not always reachable. llama.cpp ships it as `models/ggml-vocab-llama-bpe.gguf` (128,256
tokens + merges). transformers can read that GGUF too, but takes ~50 s and gets the pre-tokenizer
wrong on 11 of llama.cpp's 46 test vectors; rebuilding a `tokenizers` BPE with Llama-3's split
regex passes all 46, and is cached as a normal tokenizer folder so later loads take ~1 s.
"""
from __future__ import annotations

import functools
from pathlib import Path

from core.errors import IrisError
from core.paths import cache_dir

LLAMA3_ID = "llama-3"
# Llama-3's pre-tokenizer split (tiktoken cl100k-style), as in llama.cpp's LLAMA3 pre-tokenizer.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_TEMPLATE = "meta-llama-Llama-3.2-3B-Instruct"  # llama.cpp's copy of the real chat template


def llama3_dir() -> Path:
    """A transformers tokenizer folder for Llama-3 (built once into ~/.cache/iris/llama3-tokenizer)."""
    target = cache_dir() / "llama3-tokenizer"
    if (target / "tokenizer.json").exists():
        return target
    from core.paths import atomic_dir

    with atomic_dir(target, overwrite=True) as tmp:
        _build_llama3(tmp)
    return target


def _build_llama3(out: Path) -> None:
    from core.llamacpp import ensure_gguf_importable, tools

    ensure_gguf_importable()
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    t = tools()
    reader = gguf.GGUFReader(t.vocab("llama-bpe"))

    def field(name):
        f = reader.fields[name]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = field("tokenizer.ggml.tokens")
    merges = field("tokenizer.ggml.merges")
    types_f = reader.fields["tokenizer.ggml.token_type"]
    types = [int(types_f.parts[i][0]) for i in types_f.data]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], ignore_merges=True)
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    # token_type 3 = CONTROL in GGUF: <|begin_of_text|>, <|eot_id|>, <|reserved_special_token_*|>, ...
    tk.add_special_tokens([AddedToken(tok, special=True, normalized=False)
                           for tok, ty in zip(tokens, types) if ty == 3])
    tk.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        # id 128004: the slot Llama-3.2 names <|finetune_right_pad_id|>; in this vocab it is reserved.
        pad_token="<|reserved_special_token_2|>", model_max_length=131072, clean_up_tokenization_spaces=False)
    fast.chat_template = t.template(LLAMA3_TEMPLATE)
    fast.save_pretrained(out)


def folder(model_id: str) -> Path:
    """The tokenizer folder (tokenizer.json + chat template) for a model id, a folder, or 'llama-3'.

    Llama-3.x hub ids resolve offline to the rebuilt Llama-3 tokenizer; the embedded SmolLM2 to its
    materialised folder; other ids go through the registry (hub when reachable).
    """
    from core import models

    if model_id == LLAMA3_ID or "llama-3" in model_id.lower():
        if "/" in model_id:
            try:
                return models.resolve(model_id)
            except IrisError:
                pass  # offline: the vocab GGUF is the same tokenizer
        return llama3_dir()
    path = models.resolve(model_id)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise IrisError(f"{path} has no tokenizer files.")
    return path


@functools.lru_cache(maxsize=8)
def load(model_id: str):
    """A transformers tokenizer (with chat template) for `folder(model_id)`. Loading the Llama-3 one takes
    ≈ 10 s; counting tokens needs only `core.data.token_count.counter_for(folder(model_id))` (≈ 1 s)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder(model_id))
