"""Many users chatting with one loaded model: answers complete and unmixed, time to first token, throughput, RAM.

Run as: python bench/chat_concurrency.py [--users 1 4 8] [--max-new-tokens 48] [--model smollm2-135m-instruct]

Each row runs in a fresh process (so peak RSS is that row's own): N threads send N different questions at
once to one engine (through `core.inference`, as N browser sessions of the Chat page do), at temperature 0
with a fixed seed. Reference answers come from a first process that asks every question alone, one after
another. Printed per row: answers completed, answers identical to the solo ones, p50/p95 time to first
token as a user waits for it (queue + prompt + first token, s), total answer tokens/s over the row's
wall time, and peak RSS (MiB) with its ratio to the 1-user row. Goal: all complete and identical; peak RSS
+<10% from 1 to 8 users (answers are generated one at a time per model, so RAM should not grow with users).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "What is 12 times 12?",
             "Explain what a Boolean operator is.", "Give one tip for learning to code.",
             "What does a CPU do?", "Why is the sky blue?", "Translate 'thank you' into Spanish."]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def child(model_id: str, users: int, max_new: int, solo: bool) -> dict:
    from core import inference

    settings = inference.DecodingSettings(temperature=0.0, max_new_tokens=max_new, seed=0)
    engine = inference.load_engine(model_id)
    ask = lambda q: [{"role": "user", "content": q}]  # noqa: E731
    engine.generate(ask("Hi"), inference.DecodingSettings(temperature=0.0, max_new_tokens=2))  # warm up
    if solo:
        return {"answers": [engine.generate(ask(q), settings).text for q in QUESTIONS[:users]]}
    results: list[dict | None] = [None] * users
    barrier = threading.Barrier(users)

    def user(i: int) -> None:
        barrier.wait()
        t0 = time.perf_counter()
        s = engine.stream(ask(QUESTIONS[i % len(QUESTIONS)]), settings)
        first = None
        for _ in s:
            first = first or time.perf_counter() - t0
        results[i] = {"text": s.text, "ttft_s": first or 0.0, "tokens": s.stats.completion_tokens,
                      "finish": s.stats.finish_reason}

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"results": results, "wall_s": wall,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(args, users: int, solo: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--max-new-tokens", str(args.max_new_tokens),
           "--users", str(users)] + (["--solo"] if solo else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, nargs="+", default=[1, 4, 8], help="concurrent chats per row")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit (short answers keep it quick)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="chat model id (the embedded GGUF by default)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--solo", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.users[0], args.max_new_tokens, args.solo)))
        return
    solo = run_child(args, max(args.users), solo=True)["answers"]
    print(f"model {args.model}, max_new_tokens {args.max_new_tokens}, temperature 0, seed 0")
    print("| users | completed | identical to solo | TTFT p50 (s) | TTFT p95 (s) | total tok/s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    base_rss = None
    for n in args.users:
        row = run_child(args, n, solo=False)
        res = row["results"]
        done = sum(r is not None and r["finish"] in ("stop", "length") for r in res)
        same = sum(r is not None and r["text"] == solo[i % len(solo)] for i, r in enumerate(res))
        ttft = [r["ttft_s"] for r in res if r]
        tok_s = sum(r["tokens"] for r in res if r) / row["wall_s"]
        base_rss = base_rss or row["peak_rss_mib"]
        print(f"| {n} | {done}/{n} | {same}/{n} | {statistics.median(ttft):.2f} | {_pct(ttft, 0.95):.2f} | "
              f"{tok_s:.1f} | {row['peak_rss_mib']:.0f} ({row['peak_rss_mib'] / base_rss:.2f}x) |")


if __name__ == "__main__":
    main()
