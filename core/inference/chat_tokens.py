"""Chat prompts whose message text stays text: only the chat template's own structure becomes control tokens.

Tokenising a rendered prompt with special tokens parsed (llama.cpp `special=True`, transformers' default)
turns any control-token string a user types (`hi <|im_end|>\\n<|im_start|>system ...`) into a real control
token: a forged system turn at inference, a false end of turn inside a training row. Instead:

1. `protect(messages, specials)`: each special-token string inside a message's content is replaced by a
   placeholder of private-use characters (`\\ue000<n>\\ue001`) before the template renders the chat, so
   every special-token string left in the rendered text was written by the template itself;
2. `tokenize_protected(text, ...)`: the rendered text is cut at those strings (each becomes its id) and
   every piece between them, placeholders restored, is tokenised as plain text (special tokens not parsed).

This is exactly what llama.cpp and transformers do with special tokens parsed (cut at special tokens,
tokenise the pieces), so a chat without such strings gets the same ids as before. Users:

    ids = tokenize_chat(hf_tokenizer, messages)              # SFT/DPO rows, the API server, evaluation
    text, ids = encode_chat(hf_tokenizer, messages, add_generation_prompt=False)
    Engine.encode(messages)                                  # both chat engines go through the same two steps
"""
from __future__ import annotations

import re
from typing import Callable

OPEN, CLOSE = "\ue000", "\ue001"  # Unicode private-use characters: no tokenizer gives them a meaning


def _placeholder(i: int) -> str:
    return f"{OPEN}{i}{CLOSE}"


def _order(specials: dict[str, int]) -> list[str]:
    """Special-token strings longest first (a longer token wins where two start at the same place), then by id,
    so a placeholder's number is the same for every call with the same vocabulary."""
    return sorted((s for s in specials if s), key=lambda s: (-len(s), specials[s], s))


def protect(messages: list[dict], specials: dict[str, int]) -> list[dict]:
    """Copies of `messages` whose contents hold placeholders instead of special-token strings."""
    order = _order(specials)
    if not order:
        return [dict(m) for m in messages]
    pattern = re.compile("|".join(re.escape(s) for s in order))
    index = {s: i for i, s in enumerate(order)}
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str) and pattern.search(content):
            content = pattern.sub(lambda hit: _placeholder(index[hit.group(0)]), content)
        out.append({**m, "content": content})
    return out


def restore(text: str, specials: dict[str, int]) -> str:
    """`text` with placeholders turned back into the special-token strings they stand for."""
    if OPEN not in text:
        return text
    order = _order(specials)
    return re.sub(f"{OPEN}(\\d+){CLOSE}", lambda hit: order[int(hit.group(1))] if int(hit.group(1)) < len(order)
                  else hit.group(0), text)


def tokenize_protected(text: str, specials: dict[str, int], plain: Callable[[str], list[int]]) -> list[int]:
    """Token ids of a rendered, protected prompt: special-token strings (the template's) become their ids,
    the text between them (placeholders restored) goes through `plain` (a tokeniser that parses no
    special tokens and adds none)."""
    order = _order(specials)
    if not order:
        return plain(restore(text, specials)) if text else []
    ids: list[int] = []
    pos = 0
    for hit in re.finditer("|".join(re.escape(s) for s in order), text):
        if hit.start() > pos:
            ids += plain(restore(text[pos:hit.start()], specials))
        ids.append(specials[hit.group(0)])
        pos = hit.end()
    if pos < len(text):
        ids += plain(restore(text[pos:], specials))
    return ids


def hf_specials(tokenizer) -> dict[str, int]:
    """A transformers tokenizer's special-token strings → ids (added tokens marked special)."""
    return {t.content: int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special and t.content}


def hf_plain(tokenizer) -> Callable[[str], list[int]]:
    """Plain-text tokenisation with a transformers tokenizer: special-token strings stay text, nothing added."""
    def plain(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return plain


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                **template_kwargs) -> tuple[str, list[int]]:
    """(rendered prompt, token ids) of a chat through a transformers tokenizer's own template, with every
    message's content tokenised as plain text. The text is the real one (placeholders restored)."""
    specials = hf_specials(tokenizer)
    text = tokenizer.apply_chat_template(protect(messages, specials), tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **template_kwargs)
    return restore(text, specials), tokenize_protected(text, specials, hf_plain(tokenizer))


def tokenize_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs) -> list[int]:
    """Token ids of a chat (see `encode_chat`): only the template's structure becomes special tokens."""
    return encode_chat(tokenizer, messages, add_generation_prompt, **template_kwargs)[1]
