"""Recipe steps on rows built to be kept or dropped, the recipe's YAML round-trip, cached measurements."""
import pandas as pd
import pytest

from core.data import filters, measure
from core.data.filters import DataRecipe, Step, apply_recipe
from core.errors import IrisError

ANSWER = ("To add fractions, first find a common denominator, because only parts of the same size can be added. "
          "Then add the numerators and simplify the result. For example 1/2 + 1/3 = 3/6 + 2/6 = 5/6.")


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def good(q="How do I add fractions?", a=ANSWER):
    return conv(("user", q), ("assistant", a))


def run(rows, *steps, tokenizer="llama-3", **cols):
    df = pd.DataFrame({"messages": rows, **cols})
    return apply_recipe(df, DataRecipe(tokenizer=tokenizer, steps=list(steps)))


def kept(result):
    return result.kept.tolist()


def test_empty_turns_and_role_order():
    rows = [good(), conv(("user", "q"), ("assistant", "  ")), conv(("user", "q"), ("user", "q2"), ("assistant", "a")),
            conv(("user", "q"), ("assistant", "a"), ("user", "more?")), conv(("assistant", "a"), ("user", "q"))]
    r = run(rows, Step("empty_turns"), Step("role_order"))
    assert kept(r) == [True, False, False, False, False]
    assert r.reasons.tolist()[1:] == ["empty_turns: an empty turn", "role_order: two user turns in a row",
                                      "role_order: does not end with the assistant", "role_order: starts with the assistant"]
    assert r.funnel == [{"step": "empty_turns", "before": 5, "dropped": 1, "after": 4, "seconds": r.funnel[0]["seconds"]},
                        {"step": "role_order", "before": 4, "dropped": 3, "after": 1, "seconds": r.funnel[1]["seconds"]}]


def test_length_in_llama3_tokens_with_chat_template():
    long = good(a=ANSWER * 60)                     # ≈ 3,000 tokens
    rows = [good(), conv(("user", "hi"), ("assistant", "ok")), long]
    r = run(rows, Step("length", params={"min_content_tokens": 8, "max_tokens": 1000}))
    assert kept(r) == [True, False, False]
    m = r.measurements
    from core.data import tokenizers
    tok = tokenizers.load("llama-3")
    assert m["tokens"].iat[0] == len(tok.apply_chat_template(rows[0], tokenize=True, return_dict=True)["input_ids"])
    assert r.reasons[1] == f"length: {m['content_tokens'].iat[1]} content tokens < 8"
    assert r.reasons[2].startswith("length: ") and r.reasons[2].endswith("tokens > 1000")
    r = run(rows, Step("length", params={"min_content_tokens": 0, "max_tokens": 0, "max_turn_tokens": 100}))
    assert kept(r) == [True, True, False]


def test_score_source_language_repetition():
    rows = [good(), good("Wie addiere ich Brüche?", "Man sucht zuerst einen gemeinsamen Nenner, weil nur gleich "
                                                     "große Teile addiert werden können, und addiert dann die Zähler."),
            good(a="The answer is yes. " * 30), good(q="Explain fractions please.")]
    r = run(rows, Step("language"), Step("repetition"), Step("score", params={"min_score": 3}),
            Step("source", params={"exclude": ["junk/"]}),
            score=[4.0, 4.0, 4.0, 2.0], source=["a", "b", "c", "junk/x"])
    assert kept(r) == [True, False, False, False]
    assert r.reasons[1].startswith("language: language de")
    assert r.reasons[2].startswith("repetition: repetition 0.9")
    assert r.reasons[3] == "score: score 2.00 < 3"
    r = run(rows[:1] * 2, Step("source", params={"include": ["reasoning-gym/"]}), source=["reasoning-gym/gcd", "chat"])
    assert kept(r) == [True, False] and r.reasons[1] == "source: source 'chat' not included"


def test_exact_then_near_dedup_keep_first_survivor():
    base = ("the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence and "
            "thinks about the harvest that will come in the autumn when the leaves turn red and gold ") * 2
    words = base.split()
    near = " ".join("cat" if i in (3, 20, 37) else w for i, w in enumerate(words))  # 3 of 72 words changed
    rows = [good(a=base), good(a=base.upper()), good(a=near), good(), good(q="unrelated question here", a=ANSWER[::-1])]
    r = run(rows, Step("exact_dedup"), Step("near_dedup", params={"threshold": 0.6}))
    assert kept(r) == [True, False, False, True, True]
    assert r.reasons[1] == "exact_dedup: exact duplicate of row 0"
    assert r.reasons[2] == "near_dedup: near duplicate (Jaccard ≥ 0.6) of row 0"
    # an earlier step drops row 0: its near-duplicate (row 2) is then the one kept
    r = run(rows, Step("score", params={"min_score": 3}), Step("exact_dedup"), Step("near_dedup"),
            score=[1.0, 5, 5, 5, 5])
    assert kept(r) == [False, True, False, True, True]
    assert r.reasons[2] == "near_dedup: near duplicate (Jaccard ≥ 0.6) of row 1"


def test_edu_semantic_prefers_explanations():
    rows = [good(), conv(("user", "lol"), ("assistant", "haha ok see ya"))]
    r = run(rows, Step("edu_semantic", params={"min_score": 0.0}))
    assert kept(r) == [True, False]
    assert r.reasons[1].startswith("edu_semantic: explains/teaches score -")


def test_disabled_step_drops_nothing_and_yaml_round_trips(tmp_path):
    recipe = filters.default_recipe()
    assert [s.kind for s in recipe.steps][:3] == ["empty_turns", "role_order", "length"]
    again = DataRecipe.from_yaml(recipe.to_yaml())
    assert again == recipe
    off = DataRecipe(steps=[Step("empty_turns", enabled=False)])
    assert kept(run([conv(("user", ""), ("assistant", "a"))], *off.steps)) == [True]
    with pytest.raises(IrisError, match="`kind` is 'sharpen', which is not one of"):
        DataRecipe.from_yaml("steps: [{kind: sharpen}]")
    with pytest.raises(IrisError, match="`length.params.max` is 'max', which is not one of"):
        DataRecipe.from_yaml("steps: [{kind: length, params: {max: 3}}]")
    with pytest.raises(IrisError, match="more than once"):
        DataRecipe(steps=[Step("score"), Step("score")])


def test_measurements_are_cached_per_dataset_and_tokenizer(iris_home):
    df = pd.DataFrame({"messages": [good(), good(q="other")]})
    first = measure.measure(df, "llama-3")
    files = sorted(p.name for p in (iris_home / "cache" / "measure").iterdir())
    assert len(files) == 2 and any("tokens-" in f and f.endswith("-llama-3.parquet") for f in files)
    again = measure.measure(df, "llama-3")
    pd.testing.assert_frame_equal(first, again)
    assert first["n_turns"].tolist() == [2, 2]
