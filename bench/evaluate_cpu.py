"""Evaluate on CPU: how long the lab's set takes per model, and GGUF vs transformers held-out loss.

Run as: .venv/bin/python bench/evaluate_cpu.py [--max-new-tokens 64]

Prints, for the embedded SmolLM2 (Q4_1 GGUF and its dequantised fp32 transformers copy, same weights):
  - the five Boolean-logic questions answered through `python -m core.evaluate`'s code path
    (setting A): seconds per answer, generation tokens/s, prompt TTFT;
  - held-out loss/perplexity on the set's reference answers with llama.cpp and transformers,
    the seconds each took, and the ratio (same weights, so the losses should agree within ~1%).
Uses a throwaway IRIS_HOME unless one is set. Figures depend on how busy the CPU is: compare the
ratios printed in one run, not numbers across machines.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, like the other benches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer cap per question (tokens)")
    args = parser.parse_args()
    os.environ.setdefault("IRIS_HOME", tempfile.mkdtemp(prefix="iris-bench-eval-"))

    from core import models
    from core.evaluate import perplexity, questions
    from core.evaluate.answers import read_answers
    from core.evaluate.job import main as run_plan
    from core.evaluate.plan import EvalPlan

    models.materialise_embedded()
    plan = EvalPlan(name="bench", models=["smollm2-135m-instruct", "model:smollm2-135m-instruct"],
                    settings=["A"], max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    folder = run_plan(plan)
    wall = time.perf_counter() - started
    answers = read_answers(folder)
    print(f"lab set, 2 models x 5 questions, max_new_tokens={args.max_new_tokens}: {wall:.1f} s in all")
    for model in plan.models:
        mine = [a for a in answers if a["model"] == model]
        tok = sum(a["completion_tokens"] for a in mine)
        gen = sum(a["gen_tok_s"] for a in mine) / len(mine)
        print(f"  {model:32} {sum(a['wall_s'] for a in mine) / len(mine):6.2f} s/answer  "
              f"{gen:6.1f} gen tok/s  ttft {sum(a['ttft_s'] for a in mine) / len(mine):5.2f} s  "
              f"{tok} tokens  files {mine[0]['file_bytes'] / 2**20:.0f} MiB  rss {max(a['rss_mb'] for a in mine):.0f} MiB")

    convs = [[{"role": "user", "content": q.question}, {"role": "assistant", "content": q.reference}]
             for q in questions.load_set("boolean_logic").questions]
    gg = perplexity.gguf_perplexity(models.embedded_gguf_path(), convs)
    hf = perplexity.hf_perplexity(models.materialise_embedded(), convs)
    print(f"held-out on the references ({gg['tokens']} tokens):")
    print(f"  llama.cpp Q4_1   loss {gg['loss']:.4f}  ppl {gg['perplexity']:.2f}  {gg['seconds']:.1f} s")
    print(f"  transformers fp32 loss {hf['loss']:.4f}  ppl {hf['perplexity']:.2f}  {hf['seconds']:.1f} s")
    print(f"  loss ratio gguf/hf {gg['loss'] / hf['loss']:.4f}; time ratio gguf/hf {gg['seconds'] / hf['seconds']:.2f}")


if __name__ == "__main__":
    main()
