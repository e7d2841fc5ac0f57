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

import bisect
import functools
import re
from typing import Callable

OPEN, CLOSE = "\ue000", "\ue001"  # Unicode private-use characters: no tokenizer gives them a meaning


def _placeholder(i: int) -> str:
    return f"{OPEN}{i}{CLOSE}"


@functools.lru_cache(maxsize=32)
def _compiled(items: tuple) -> tuple[list[str], re.Pattern | None]:
    specials = dict(items)
    order = sorted((s for s in specials if s), key=lambda s: (-len(s), specials[s], s))
    return order, re.compile("|".join(re.escape(s) for s in order)) if order else None


def _order(specials: dict[str, int]) -> list[str]:
    """Special-token strings longest first (a longer token wins where two start at the same place), then by id,
    so a placeholder's number is the same for every call with the same vocabulary. Cached per vocabulary: a
    Llama-3 tokenizer has 256 of them, and sorting them for every training row cost more than tokenising it."""
    return _compiled(tuple(specials.items()))[0]


def _pattern(specials: dict[str, int]) -> re.Pattern | None:
    """A regex matching any special-token string (longest first), or None when there are none."""
    return _compiled(tuple(specials.items()))[1]


def protect(messages: list[dict], specials: dict[str, int]) -> list[dict]:
    """Copies of `messages` whose contents hold placeholders instead of special-token strings."""
    order, pattern = _order(specials), _pattern(specials)
    if not order:
        return [dict(m) for m in messages]
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
    for hit in _pattern(specials).finditer(text):
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


def _restore_mapped(text: str, start: int, order: list[str]) -> tuple[str, list[int] | None]:
    """(`text` with placeholders restored, for each of its characters the position in the protected text it
    came from, or None when `text` held no placeholder: then it is `start` + index). A restored
    special-token string maps onto its placeholder's span."""
    if OPEN not in text:
        return text, None
    out, where, pos = [], [], 0
    for hit in re.finditer(f"{OPEN}(\\d+){CLOSE}", text):
        n = int(hit.group(1))
        if n >= len(order):
            continue
        out.append(text[pos:hit.start()])
        where += range(start + pos, start + hit.start())
        out.append(order[n])
        last = hit.end() - 1 - hit.start()
        where += (start + hit.start() + min(k, last) for k in range(len(order[n])))
        pos = hit.end()
    out.append(text[pos:])
    where += range(start + pos, start + len(text))
    return "".join(out), where


def _plain_batch(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character offsets) of each text tokenised as plain text (special-token strings not parsed, nothing
    added), in one call to the Rust tokenizer: twice as fast as going through transformers' __call__."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        out = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        return list(zip(out["input_ids"], out["offset_mapping"]))
    backend.encode_special_tokens = True  # as transformers' split_special_tokens=True sets it (and leaves it)
    return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]


def _parsed(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character offsets) of `text` with special-token strings parsed, nothing added: what
    transformers' apply_chat_template does with the whole rendered chat."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        out = tokenizer(text, add_special_tokens=False, split_special_tokens=False, return_offsets_mapping=True)
        return list(out["input_ids"]), list(out["offset_mapping"])
    if backend.encode_special_tokens:  # setting it rebuilds the tokenizer's matcher (~2 ms): only when needed
        backend.encode_special_tokens = False
    encoding = backend.encode(text, add_special_tokens=False)
    return encoding.ids, encoding.offsets


def _cut_and_encode(tokenizer, text: str, specials: dict[str, int], order: list[str],
                    pattern: re.Pattern | None) -> tuple[list[int], list[int], list[int]]:
    """(ids, first character, last+1 character of each token in `text`) of a protected rendering: cut at the
    template's special-token strings (each is its id), the pieces between restored and tokenised as plain text."""
    parts: list = []  # a special-token match, or (start in text, restored piece, character map)
    pos = 0
    for hit in [*(pattern.finditer(text) if pattern else ()), None]:
        end = hit.start() if hit else len(text)
        if end > pos:
            parts.append((pos, *_restore_mapped(text[pos:end], pos, order)))
        if hit:
            parts.append(hit)
            pos = hit.end()
    encoded = iter(_plain_batch(tokenizer, [p[1] for p in parts if isinstance(p, tuple)]))
    ids: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    for part in parts:
        if not isinstance(part, tuple):
            ids.append(specials[part.group(0)])
            starts.append(part.start())
            ends.append(part.end())
            continue
        start, _, where = part
        piece_ids, offsets = next(encoded)
        ids += piece_ids
        for a, b in offsets:
            if b <= a:  # an empty span holds no character (kept in order for the search in encode_chat_masked)
                starts.append(ends[-1] if ends else 0)
                ends.append(starts[-1])
            elif where is None:
                starts.append(start + a)
                ends.append(start + b)
            else:
                starts.append(where[a])
                ends.append(where[b - 1] + 1)
    return ids, starts, ends


def encode_chat_masked(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                       specials: dict[str, int] | None = None, **template_kwargs) -> tuple[list[int], list[int]]:
    """(token ids, assistant mask) of a chat rendered with a training template (`{% generation %}` markers),
    every message's content tokenised as plain text. The mask is transformers' own
    (`apply_chat_template(return_assistant_tokens_mask=True)`): 1 from the token holding a generation block's
    first character to the one holding its last, so a chat without control-token strings in its text gets the
    same ids and mask as transformers gives it (pinned on the bundled sample by tests/test_train_tokens.py).
    `specials`: `hf_specials(tokenizer)`, passed in by callers that encode many chats (it costs ~2 ms with
    Llama-3's 256 special tokens)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    specials = hf_specials(tokenizer) if specials is None else specials
    order, pattern = _compiled(tuple(specials.items()))
    rendered, indices = render_jinja_template(
        conversations=[protect(messages, specials)], chat_template=tokenizer.get_chat_template(),
        return_assistant_tokens_mask=True, add_generation_prompt=add_generation_prompt,
        **{**tokenizer.special_tokens_map, **template_kwargs})
    text, spans = rendered[0], indices[0]
    if OPEN not in text:  # no special-token string in any content: all of them are the template's
        ids, offsets = _parsed(tokenizer, text)
        starts, ends = [a for a, _ in offsets], [b for _, b in offsets]
    else:
        ids, starts, ends = _cut_and_encode(tokenizer, text, specials, order, pattern)

    def char_to_token(c: int) -> int | None:  # the first token holding character c, as tokenizers finds it
        i = bisect.bisect_right(ends, c)  # offsets rise along the tokens; empty ones hold nothing
        return i if i < len(ids) and starts[i] <= c < ends[i] else None

    mask = [0] * len(ids)
    for a, b in spans:
        first, last = char_to_token(a), char_to_token(b - 1)
        if first is None:  # as transformers: a block that starts on no token ends the marking
            break
        for t in range(first, last + 1 if last else len(ids)):
            mask[t] = 1
    return ids, mask
