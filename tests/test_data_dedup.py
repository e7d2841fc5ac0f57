"""core.data.dedup: exact dedup on normalised text, near-dup clusters on planted 5%-word-changed copies."""
import random

import numpy as np

from core.data import dedup


def _corpus(n=300, words=200, seed=0):
    rng = random.Random(seed)
    vocab = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "io", "ump", "orn", "ite", "ash", "oo")]
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)], vocab, rng


def _change(text, frac, vocab, rng):
    w = text.split()
    for i in rng.sample(range(len(w)), int(frac * len(w))):
        w[i] = rng.choice(vocab) + "q"
    return " ".join(w)


def test_exact_duplicates_on_normalised_text():
    texts = ["Hello  World", "other", "hello world\n", "other", "x"]
    assert dedup.exact_duplicates(texts).tolist() == [0, 1, 0, 1, 4]
    assert dedup.duplicates_to_drop([0, 1, 0, 1, 4]).tolist() == [False, False, True, True, False]


def test_near_duplicates_find_planted_copies_and_keep_distinct_texts():
    base, vocab, rng = _corpus()
    copies = [_change(t, 0.05, vocab, rng) for t in base[:100]]
    texts = base + copies
    clusters = dedup.near_duplicates(texts, threshold=0.6)
    found = np.mean(clusters[300:] == np.arange(100))
    assert found >= 0.95
    assert not dedup.duplicates_to_drop(clusters)[:300].any()  # the originals are all distinct and kept


def test_exact_jaccard_matches_sets():
    texts = ["a b c d e f", "a b c d e g", "z y x w v u"]
    j = dedup.exact_jaccard(texts, np.array([[0, 1], [0, 2]]))
    assert j.tolist() == [1 / 3, 0.0]  # shingles {abcde, bcdef} vs {abcde, bcdeg}


def test_short_and_empty_texts():
    clusters = dedup.near_duplicates(["", "", "one two", "one two", "three"], threshold=0.6)
    assert clusters.tolist() == [0, 1, 2, 2, 4]  # empty texts are left to the exact step


def test_signature_estimate_tracks_jaccard():
    base, vocab, rng = _corpus(n=50, words=400, seed=1)
    sig = dedup.minhash_signatures(base + [_change(t, 0.05, vocab, rng) for t in base])
    est = (sig[:50] == sig[50:]).mean(axis=1)
    assert 0.5 < est.mean() < 0.75
    assert (sig[:50] == sig[1:51]).mean() < 0.05
    assert dedup.lsh_clusters(sig, 0.4)[50:].tolist() == list(range(50))
