"""Exact and near-duplicate detection over many texts, vectorised with numpy.

Stable API (the Augment helper uses it for cross-source dedup):

    exact_duplicates(texts) -> np.ndarray[int64]          cluster id per text
    near_duplicates(texts, threshold=0.6, num_perm=256, ngram=5, seed=0) -> np.ndarray[int64]
    minhash_signatures(texts, num_perm=256, ngram=5, seed=0) -> np.ndarray[uint64] (n, num_perm)
    lsh_clusters(signatures, threshold=0.6) -> np.ndarray[int64]
    lsh_candidates(signatures, threshold) / exact_jaccard(texts, pairs) / components(n, pairs)
    shingle_hashes(texts, ngram) -> (hashes, text index)  word n-gram hashes, vectorised
    duplicates_to_drop(clusters) -> np.ndarray[bool]      True for every row but the first of its cluster
    normalise_text(text) -> str                           what "exact" compares

A cluster id is the index of the cluster's first (lowest-index) member, so `clusters == arange(n)`
marks the rows to keep, and texts from several sources can be concatenated and clustered together.

Near-duplicates: texts are lower-cased and split into words (runs of ASCII letters/digits or any
non-ASCII byte), hashed with a polynomial rolling hash over the raw UTF-8 bytes — no Python object per
word — and turned into word `ngram`-shingles. Signatures use one-permutation hashing with rotation
densification (Shrivastava & Li, 2014): each shingle is hashed once and lands in one of `num_perm`
bins, so the cost is O(shingles), not O(shingles × permutations) as in classic MinHash. LSH bands
(b × r chosen for recall near `threshold`) give candidate pairs; `near_duplicates` links a pair when
its true shingle Jaccard reaches `threshold` (`lsh_clusters` uses the signature estimate instead);
clusters are connected components.
A copy with 5% of its words changed has a word-5-gram Jaccard near 0.63 with its original.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

_M64 = (1 << 64) - 1
_P = np.uint64(0x100000001B3)  # FNV prime: odd, so it has an inverse mod 2^64
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_EMPTY = np.uint64(_M64)

NEAR_DUP_THRESHOLD = 0.6  # word 5-gram Jaccard at which two rows count as near duplicates (the default everywhere)


def normalise_text(text: str) -> str:
    """Lower-case with whitespace runs collapsed: 'Hello   World\\n' and 'hello world' are the same text."""
    return " ".join(text.lower().split())


def exact_duplicates(texts: Sequence[str]) -> np.ndarray:
    """Cluster id per text (index of its first occurrence after `normalise_text`)."""
    import pandas as pd

    if len(texts) == 0:
        return np.zeros(0, dtype=np.int64)
    codes, _ = pd.factorize(pd.Series([normalise_text(t) for t in texts], dtype=object), sort=False)
    first = np.full(codes.max() + 1, len(texts), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(texts)))
    return first[codes]


def exact_keys(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit halves of xxh3-128 of each text's `normalise_text`: equal normalised text, equal key (a
    collision between different texts is ≈ n² / 2^129: none in any real dataset). The out-of-core engines
    group rows by this key instead of holding every text, as `exact_duplicates` does."""
    import xxhash

    digests = [xxhash.xxh3_128_intdigest(normalise_text(t).encode("utf-8", "surrogatepass")) for t in texts]
    hi = np.fromiter((d >> 64 for d in digests), dtype=np.uint64, count=len(digests))
    lo = np.fromiter((d & _M64 for d in digests), dtype=np.uint64, count=len(digests))
    return hi, lo


def duplicates_to_drop(clusters: np.ndarray) -> np.ndarray:
    """True for rows that are not the first member of their cluster."""
    clusters = np.asarray(clusters)
    return clusters != np.arange(len(clusters))


def near_duplicates(texts: Sequence[str], threshold: float = NEAR_DUP_THRESHOLD, num_perm: int = 256, ngram: int = 5,
                    seed: int = 0) -> np.ndarray:
    """Cluster id per text: LSH candidates whose true word-`ngram` Jaccard ≥ `threshold` are linked."""
    texts = list(texts)
    sig = minhash_signatures(texts, num_perm=num_perm, ngram=ngram, seed=seed)
    cand = plausible_pairs(sig, lsh_candidates(sig, threshold), threshold)
    return components(len(texts), cand[exact_jaccard(texts, cand, ngram) >= threshold])


def plausible_pairs(signatures: np.ndarray, pairs: np.ndarray, threshold: float, margin: float = 0.15) -> np.ndarray:
    """Pairs whose signature agreement is ≥ threshold − margin: a vectorised pre-check, so the exact
    Jaccard (a Python loop) only runs on real contenders. The estimate's error at ~250 shingles is
    ≈ −0.03 ± 0.035, so a 0.15 margin loses nothing measurable. Most LSH candidates are far below:
    64 of the bins rule those out first (their estimate's spread is ±0.06; a 0.2 wider margin is > 3σ)."""
    keep = np.zeros(len(pairs), dtype=bool)
    quick = min(64, signatures.shape[1])
    for lo in range(0, len(pairs), 20000):  # 20k pairs × num_perm × 8 B per block
        a, c = pairs[lo:lo + 20000, 0], pairs[lo:lo + 20000, 1]
        near = (signatures[a, :quick] == signatures[c, :quick]).mean(axis=1) >= threshold - margin - 0.2
        a, c = a[near], c[near]
        keep[lo + np.flatnonzero(near)] = (signatures[a] == signatures[c]).mean(axis=1) >= threshold - margin
    return pairs[keep]


# ---------------------------------------------------------------- hashing

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrap-around multiplication is intended)."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    lower = np.arange(256, dtype=np.uint8)
    lower[65:91] += 32  # A-Z → a-z
    word = np.zeros(256, dtype=bool)
    word[48:58] = word[97:123] = word[65:91] = True
    word[128:] = True  # any byte of a multi-byte UTF-8 character counts as a letter
    return lower, word


_POWERS: dict[str, np.ndarray] = {}
CHUNK_CHARS = 1 << 22  # texts are hashed in blocks of ≈ 4M characters: ≈ 10 uint64 scratch arrays of that size


def chunks(texts: Sequence[str], max_chars: int = CHUNK_CHARS, max_items: int = 4000) -> list[tuple[int, int]]:
    """(lo, hi) bounds of consecutive blocks of texts, each ≤ max_chars in total (or one longer text)."""
    return chunk_bounds([len(t) for t in texts], max_chars, max_items)


def chunk_bounds(sizes: Sequence[int], max_chars: int = CHUNK_CHARS, max_items: int = 4000) -> list[tuple[int, int]]:
    """`chunks` for items of the given sizes (in characters)."""
    out, lo = [], 0
    while lo < len(sizes):
        hi, size = lo, 0
        while hi < len(sizes) and hi - lo < max_items and (hi == lo or size + sizes[hi] <= max_chars):
            size += sizes[hi] + 1
            hi += 1
        out.append((lo, hi))
        lo = hi
    return out


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^j and P^-j mod 2^64 for j < n (grown on demand, reused across calls)."""
    if "p" not in _POWERS or len(_POWERS["p"]) < n:
        size = max(n, 2 * len(_POWERS.get("p", ())), CHUNK_CHARS + 1)  # grow by doubling: texts come in all sizes
        with np.errstate(over="ignore"):
            _POWERS["p"] = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, _P, dtype=np.uint64))])
            _POWERS["q"] = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, _P_INV, dtype=np.uint64))])
    return _POWERS["p"][:n], _POWERS["q"][:n]


def _word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hash per word, document index per word) for a chunk of texts, from their UTF-8 bytes."""
    encoded = [t.encode("utf-8", "replace") for t in texts]
    starts = np.zeros(len(encoded), dtype=np.int64)
    np.cumsum([len(e) + 1 for e in encoded[:-1]], out=starts[1:])
    raw = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    lower, word = _tables()
    is_word = word[raw]
    edges = np.diff(np.concatenate([[False], is_word, [False]]).astype(np.int8))
    w_start, w_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    p, q = _powers(len(raw) + 1)
    prefix = np.zeros(len(raw) + 1, dtype=np.uint64)
    # value+1 so that a zero byte still changes the hash; sums wrap mod 2^64 by design
    np.cumsum((lower[raw].astype(np.uint64) + np.uint64(1)) * p[: len(raw)], out=prefix[1:])
    hashes = (prefix[w_end] - prefix[w_start]) * q[w_start]  # position-independent word hash
    return _mix(hashes), np.searchsorted(starts, w_start, side="right") - 1


def _shingles(texts: Sequence[str], ngram: int, salt: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """(hash per word n-gram, document per n-gram); a text shorter than n words gives its words as unigrams."""
    wh, doc = _word_hashes(texts)
    return shingles_from_words(wh, doc, len(texts), ngram, salt)


def shingles_from_words(wh: np.ndarray, doc: np.ndarray, n_docs: int, ngram: int,
                        salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`_shingles` from word hashes already made (`_word_hashes`), documents numbered 0..n_docs-1 in order:
    the words of several texts (say a conversation's turns) given one document index read as one text."""
    n_words = np.bincount(doc, minlength=n_docs)
    if len(wh) >= ngram:
        windows = len(wh) - ngram + 1
        acc = np.zeros(windows, dtype=np.uint64)
        for k in range(ngram):  # order-dependent combination: "a b" ≠ "b a"
            acc += wh[k:k + windows] * np.uint64((0x9E3779B97F4A7C15 * (k + 1)) & _M64 | 1)
        valid = doc[:windows] == doc[ngram - 1:]
        sh, sd = acc[valid], doc[:windows][valid]
    else:
        sh, sd = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    short = n_words[doc] < ngram
    sh = np.concatenate([sh, wh[short] ^ np.uint64(0x5555555555555555)])
    sd = np.concatenate([sd, doc[short]])
    return _mix(sh ^ salt), sd


def shingle_hashes(texts: Sequence[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash per word `ngram`, index of its text) for every n-gram of every text, in text order."""
    with np.errstate(over="ignore"):
        return _shingles(texts, ngram, np.uint64(0))


def signature_salt(seed: int = 0) -> np.uint64:
    return _mix(np.array([seed + 1], dtype=np.uint64))[0]


def minhash_signatures(texts: Sequence[str], num_perm: int = 256, ngram: int = 5, seed: int = 0) -> np.ndarray:
    """One-permutation MinHash signatures, shape (len(texts), num_perm), uint64; an all-`_EMPTY` row = no words."""
    salt = signature_salt(seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo, hi in chunks(texts):
            sh, sd = _shingles(texts[lo:hi], ngram, salt)
            out[lo:hi] = signature_block(sh, sd, hi - lo, num_perm)
    return out


def signature_block(sh: np.ndarray, sd: np.ndarray, n_docs: int, num_perm: int = 256) -> np.ndarray:
    """Signatures of `n_docs` documents from their salted shingle hashes (`_shingles(..., signature_salt())`)."""
    sig = np.full((n_docs, num_perm), _EMPTY, dtype=np.uint64)
    with np.errstate(over="ignore"):
        b = (sh >> np.uint64(32)) % np.uint64(num_perm)
        np.minimum.at(sig.reshape(-1), sd * num_perm + b.astype(np.int64), sh & np.uint64(0xFFFFFFFF))
    return _densify(sig)


def _densify(sig: np.ndarray) -> np.ndarray:
    """Fill empty bins from the next non-empty bin to the right (circularly), offset by the distance."""
    n, bins = sig.shape
    empty = sig == _EMPTY
    if not empty.any():
        return sig
    doubled = np.concatenate([sig, sig], axis=1)
    pos = np.where(np.concatenate([~empty, ~empty], axis=1), np.arange(2 * bins), 2 * bins)
    nxt = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1][:, :bins]  # next non-empty position
    has_any = nxt[:, 0] < 2 * bins
    nxt = np.minimum(nxt, 2 * bins - 1)
    dist = (nxt - np.arange(bins)).astype(np.uint64)
    filled = np.take_along_axis(doubled, nxt, axis=1) + dist * np.uint64(0x100000000)
    out = np.where(empty, filled, sig)
    out[~has_any] = _EMPTY
    return out


# ---------------------------------------------------------------- LSH

def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands b and rows r (b*r ≤ num_perm) minimising false positives below and false negatives above
    `threshold`, with misses weighted 4× (a missed duplicate survives; a false candidate is re-checked)."""
    js = np.linspace(0, 1, 201)
    best, best_cost = (1, num_perm), np.inf
    for r in range(1, num_perm + 1):
        b = num_perm // r
        prob = 1 - (1 - js ** r) ** b
        cost = np.trapezoid(np.where(js < threshold, prob, 0), js) + 4 * np.trapezoid(np.where(js >= threshold, 1 - prob, 0), js)
        if cost < best_cost:
            best, best_cost = (b, r), cost
    return best


LSH_MAX_OFFSET = 32  # within an LSH bucket, each member is paired with the next this many (out-of-core too)


def lsh_candidates(signatures: np.ndarray, threshold: float = NEAR_DUP_THRESHOLD,
                   max_offset: int = LSH_MAX_OFFSET) -> np.ndarray:
    """Candidate pairs (i, j), i < j, sharing at least one LSH band; banding is tuned for recall a bit
    below `threshold` (by 0.1): the signature's Jaccard estimate runs ≈0.03 low and ±0.035 at ~250 shingles."""
    n, num_perm = signatures.shape
    b, r = lsh_params(max(threshold - 0.1, 0.05), num_perm)
    valid = np.flatnonzero(signatures[:, 0] != _EMPTY)
    codes = [np.zeros(0, dtype=np.int64)]  # pair (i, j) as i * n + j: one 1-D unique instead of a 2-D one
    with np.errstate(over="ignore"):
        for band in range(b):
            key = np.zeros(len(valid), dtype=np.uint64)
            for k in range(band * r, (band + 1) * r):
                key = _mix(key ^ signatures[valid, k])
            order = np.argsort(key, kind="stable")  # stable: within a bucket, lower index first
            sk, members = key[order], valid[order]
            group = np.cumsum(np.concatenate([[True], sk[1:] != sk[:-1]]))
            # every pair within a bucket up to `max_offset` apart (all pairs for buckets ≤ max_offset+1
            # rows; larger ones stay connected through neighbours), so dropping one member in an
            # earlier step never disconnects the others
            for d in range(1, max_offset + 1):
                same = group[d:] == group[:-d]
                if not same.any():
                    break
                codes.append(members[:-d][same] * n + members[d:][same])
    import pandas as pd

    code = np.sort(pd.unique(np.concatenate(codes)))
    return np.stack([code // n, code % n], axis=1)


def lsh_clusters(signatures: np.ndarray, threshold: float = NEAR_DUP_THRESHOLD) -> np.ndarray:
    """Cluster id per row linking LSH candidates whose signature agreement (Jaccard estimate) ≥ threshold."""
    cand = lsh_candidates(signatures, threshold)
    keep = np.zeros(len(cand), dtype=bool)
    for lo in range(0, len(cand), 20000):  # agreement in blocks: 20k pairs × num_perm × 8 B
        a, c = cand[lo:lo + 20000, 0], cand[lo:lo + 20000, 1]
        keep[lo:lo + 20000] = (signatures[a] == signatures[c]).mean(axis=1) >= threshold
    return components(len(signatures), cand[keep])


def exact_jaccard(texts: Sequence[str], pairs: np.ndarray, ngram: int = 5) -> np.ndarray:
    """True word-`ngram` Jaccard of each pair (i, j) of `texts` (same shingling as the signatures)."""
    involved = np.unique(pairs) if len(pairs) else np.zeros(0, dtype=np.int64)
    return jaccard_of_sets(shingle_sets(texts, involved, ngram), pairs)


def shingle_sets(texts: Sequence[str], ids: np.ndarray, ngram: int = 5) -> dict[int, np.ndarray]:
    """Sorted unique word-`ngram` hashes of texts[i] for each i in `ids` (what exact_jaccard compares)."""
    sets: dict[int, np.ndarray] = {}
    with np.errstate(over="ignore"):
        for lo, hi in chunks([texts[i] for i in ids]):
            part = ids[lo:hi]
            sh, sd = _shingles([texts[i] for i in part], ngram, np.uint64(0))
            order = np.lexsort((sh, sd))
            sh, sd = sh[order], sd[order]
            bounds = np.searchsorted(sd, np.arange(len(part) + 1))
            for k, i in enumerate(part):
                sets[int(i)] = np.unique(sh[bounds[k]:bounds[k + 1]])
    return sets


def jaccard_of_sets(sets: dict[int, np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """Jaccard of each pair (i, j) from `shingle_sets`' sorted sets."""
    out = np.zeros(len(pairs))
    if not len(pairs):
        return out
    # per first member: all its partners' shingles against its sorted set in one searchsorted
    order = np.argsort(pairs[:, 0], kind="stable")
    firsts = pairs[order, 0]
    cuts = np.flatnonzero(np.concatenate([[True], firsts[1:] != firsts[:-1], [True]]))
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        rows = order[lo:hi]
        a = sets[int(firsts[lo])]
        bs = [sets[int(j)] for j in pairs[rows, 1]]
        sizes = np.array([len(b) for b in bs])
        inter = np.zeros(len(bs))
        if len(a) and sizes.sum():
            cat = np.concatenate(bs)
            pos = np.minimum(np.searchsorted(a, cat), len(a) - 1)
            hits = np.concatenate([[0], np.cumsum(a[pos] == cat)])
            ends = np.cumsum(sizes)
            inter = hits[ends] - hits[ends - sizes]
        union = len(a) + sizes - inter
        out[rows] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Cluster id (lowest member index) per row of the graph whose edges are `pairs` (k, 2)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    rep = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(rep, labels, np.arange(n))
    return rep[labels]
