"""Chat beside busy processes: Iris's generation with llama.cpp's thread count following the free cores
(core.inference.threads) vs fixed at every core, as when a CPU training run shares the machine.

Run as: .venv/bin/python bench/chat_contention.py [--busy 0,1,2] [--new-tokens 96] [--rounds 2]

For each number of busy processes (Python busy loops at the same priority as the bench, what a training run's
threads look like to the scheduler), the embedded SmolLM2 answers the same question greedily through
core.inference twice per round: once with IRIS_CHAT_THREADS fixing the threads at the core count, once
following the free cores. Prints the best generation tok/s of each and their ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def answer_speed(engine, fixed: bool, cores: int, new_tokens: int) -> float:
    from core import inference

    if fixed:  # read at each answer: the engine's threads stay at `cores`
        os.environ["IRIS_CHAT_THREADS"] = str(cores)
    else:
        os.environ.pop("IRIS_CHAT_THREADS", None)
    engine.reset_cache()
    settings = inference.DecodingSettings(temperature=0.0, max_new_tokens=new_tokens)
    answer = engine.generate([{"role": "user", "content": "Write a short story about a cat who learns to swim."}], settings)
    return answer.stats.gen_tok_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", default="0,1,2", help="comma list: busy processes beside the chat")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from core import inference

    cores = len(os.sched_getaffinity(0))
    os.environ.pop("IRIS_CHAT_THREADS", None)
    engine = inference.open_engine(inference.embedded_model())
    print(f"uptime: {os.getloadavg()}; {cores} cores; embedded SmolLM2, {args.new_tokens} new tokens, greedy")
    print("busy processes | fixed at all cores (tok/s) | following free cores (tok/s) | ratio")
    for busy in (int(b) for b in args.busy.split(",")):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(0.5)
            best = {True: 0.0, False: 0.0}
            for _ in range(args.rounds):
                for fixed in (True, False):
                    best[fixed] = max(best[fixed], answer_speed(engine, fixed, cores, args.new_tokens))
        finally:
            for h in hogs:
                h.kill()
        print(f"{busy} | {best[True]:.1f} | {best[False]:.1f} | {best[False] / max(best[True], 1e-9):.2f}×", flush=True)


if __name__ == "__main__":
    main()
