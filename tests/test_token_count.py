"""core.data.token_count: the vectorised Llama-3 pre-tokenizer equals the real one; counts equal the tokenizer's."""
import json
import random

import numpy as np
import pytest

from core.data import token_count, tokenizers
from core.data.formats import SAMPLE_PATH

# characters that exercise every branch of the split: cases, contractions (incl. the long s that (?i)
# folds onto "s"), digits (ASCII and not), spaces, tabs, newlines, Unicode spaces, punctuation, CJK, emoji
ALPHABET = list("aAsStTrReEvVlLmMdDxy19 0  \t\n\r'.(-,\"$") + [
    "é", "中", "\xa0", "\u2009", "²", "ſ", "’", "\u3000", "\x85", "\u212a", "Ⅻ", "٣", "\u200b", "🙂", "\x0b"]


@pytest.fixture(scope="module")
def llama3():
    return token_count.counter_for(tokenizers.llama3_dir())


def _pieces(texts):
    """Pieces per text from core.data.token_count's split (texts joined by sentinels, as the counter does)."""
    joined = "\0".join(texts)
    u = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).copy()
    seps = np.cumsum(np.array([len(t) for t in texts]) + 1)[:-1] - 1
    u[seps] = token_count._SENTINEL
    starts = token_count._llama3_starts(u, token_count.classes(u))
    ends = np.append(starts[1:], len(u))
    out = [[] for _ in texts]
    for s, e, t in zip(starts, ends, np.searchsorted(seps, starts)):
        if u[s] != token_count._SENTINEL:
            out[t].append(joined[s:e])
    return out


def test_split_equals_the_real_pretokenizer_on_random_strings(llama3):
    pre = llama3.tok.pre_tokenizer
    rng = random.Random(0)
    checked = 0
    for _ in range(1500):
        texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 16))) for _ in range(rng.randint(1, 6))]
        for text, got in zip(texts, _pieces(texts)):
            # the byte-level step renames bytes but never splits: compare the pieces' offsets in the text
            want = [text[a:b] for _, (a, b) in pre.pre_tokenize_str(text)]
            assert got == want, repr(text)
            checked += 1
    assert checked > 3000


def test_known_splits():
    assert _pieces(["I'm here, don't ((panic)).\n\n  Call 12345 now\t!"])[0] == [
        "I", "'m", " here", ",", " don", "'t", " ((", "panic", ")).\n\n", " ", " Call", " ", "123", "45", " now", "\t", "!"]


def test_counts_equal_the_tokenizer_on_the_sample(llama3):
    rows = [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines()]
    texts = [t["value"] for r in rows for t in r["conversations"]] + ["", "   ", "a <|eot_id|> b", "x" * 5000]
    got = llama3.count(texts, strip=False)
    want = [len(e.ids) for e in llama3.tok.encode_batch(texts, add_special_tokens=False)]
    assert got.tolist() == want
    assert llama3.pieces is not None  # the piece path really ran
    # a second pass is served from the piece cache and gives the same counts
    assert llama3.count(texts, strip=False).tolist() == want


def test_llama3_counts_and_overhead_add_up_to_the_rendered_template(llama3):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizers.llama3_dir())
    convs = [[{"role": "user", "content": "  What is 2+2?\n"}, {"role": "assistant", "content": "It's 4. "}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
              {"role": "assistant", "content": "Bye 👋"}]]
    for msgs in convs:
        whole = len(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
        parts = int(llama3.count([m["content"] for m in msgs]).sum()) + llama3.overhead(tuple(m["role"] for m in msgs))
        assert parts == whole


def test_other_tokenizers_count_through_tokenizers(embedded_model_dir):
    counter = token_count.TokenCounter(embedded_model_dir)
    assert counter.pieces is None  # SmolLM2 splits digits and uses GPT-2's regex: no piece path
    texts = ["Hello there, 12345!", "", "Ünïcödé text\n\nwith lines"]
    want = [len(e.ids) for e in counter.tok.encode_batch(texts, add_special_tokens=False)]
    assert counter.count(texts, strip=False).tolist() == want


def test_llama3_split_detection():
    spec = json.loads((tokenizers.llama3_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    assert token_count.is_llama3_bpe(spec)
    spec["normalizer"] = {"type": "NFC"}
    assert not token_count.is_llama3_bpe(spec)


def test_background_subprocess_counts_equal_in_process(llama3, monkeypatch):
    """Big datasets count tokens in a `python -m core.data.token_count` subprocess: same numbers as in-process."""
    import pandas as pd

    from core.data import measure

    rows = [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines()]
    df = pd.DataFrame({"messages": [[{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]),
                                      "content": t["value"]} for t in r["conversations"]] for r in rows[:300]]})
    here = measure.token_measurements(df, "llama-3")
    monkeypatch.setattr(measure, "BACKGROUND_MIN_CHARS", 0)
    job = token_count.count_in_background([t["content"] for m in df["messages"] for t in m], tokenizers.llama3_dir())
    assert job.proc.pid  # a real subprocess
    there = measure.token_measurements(df, "llama-3", background=True)()
    pd.testing.assert_frame_equal(here, there)
    assert job.result().sum() == here["content_tokens"].sum()


def test_template_renders_as_transformers_renders_it(llama3):
    """core.templates.render_template (plain jinja2, so worker processes need not import transformers) gives
    transformers' own render for the real Llama-3.2 template, the training templates with {% generation %}
    markers, and a template using tojson, loop controls and raise_exception."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from core import templates
    from core.train.backends import CHATML_TRAIN_TEMPLATE, LLAMA3_TRAIN_TEMPLATE

    strict = ("{% for m in messages %}{% if loop.index0 > 3 %}{% break %}{% endif %}"
              "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('alternate!') }}{% endif %}"
              "{{ m | tojson }}\n  {% endfor %}{{ bos_token }}")
    orders = [("user", "assistant"), ("system", "user", "assistant", "user", "assistant"), ("assistant",),
              ("user", "assistant", "user", "assistant", "user", "assistant")]
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    for template in (llama3.template, LLAMA3_TRAIN_TEMPLATE, CHATML_TRAIN_TEMPLATE, strict):
        for roles in orders:
            msgs = [{"role": r, "content": f"été {k} \"x\"" if k % 2 else ""} for k, r in enumerate(roles)]
            try:
                want = render_jinja_template(conversations=[msgs], chat_template=template, **special)[0][0]
            except Exception as err:
                with pytest.raises(type(err)):
                    templates.render_template(template, msgs, **special)
                continue
            assert templates.render_template(template, msgs, **special) == want
    assert llama3.overhead(("user", "assistant")) > 0 and ("user", "assistant") in llama3._overheads
