"""core.data.augment + core.data.generate: exact mixture sizes, reproducibility, origins, cross-source dedup,
generated rows through real chat templates, bad inputs that write nothing, and the example recipe."""
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core import versions
from core.data import augment, tokenizers
from core.data.augment import AugmentRecipe, SourceSpec
from core.data.generate import GeneratorSpec, generate
from core.errors import IrisError
from core.paths import REPO_ROOT, datasets_dir

VOCAB = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "io", "ump", "orn", "ite", "ash", "oo")]


def _text(rng: random.Random, words: int = 40) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def _rows(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"messages": [[{"role": "user", "content": t}, {"role": "assistant", "content": "Noted."}]
                                      for t in texts]})


def _save(name: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = [_text(rng) for _ in range(n)]
    versions.save(name, _rows(texts))
    return texts


def _version(name: str, **kw) -> SourceSpec:
    return SourceSpec(name=name, kind="version", version=name, **kw)


def _recipe(*sources, **kw) -> AugmentRecipe:
    return AugmentRecipe(sources=list(sources), tokenizer="llama-3", **kw)


def test_shares_give_exact_sizes_and_origins():
    _save("a", 30, 1), _save("b", 20, 2)
    mix = augment.build(_recipe(_version("a", share=0.7), _version("b", share=0.3), total_rows=20, seed=5))
    assert mix.train["origin"].value_counts().to_dict() == {"a": 14, "b": 6}
    assert set(mix.train["origin_detail"]) == {f"version a ({versions.load_manifest('a')['content_hash'][:12]})",
                                                f"version b ({versions.load_manifest('b')['content_hash'][:12]})"}
    # shares 1/3 each of 10: largest remainder gives the leftover row to the first source
    _save("c", 25, 3)
    mix = augment.build(_recipe(*[_version(n, share=0.3334 if n == "a" else 0.3333) for n in "abc"], total_rows=10))
    assert mix.train["origin"].value_counts().to_dict() == {"a": 4, "b": 3, "c": 3}
    # no total: the largest mixture that needs no repeats (b's 20 rows at share 0.5 → 40)
    mix = augment.build(_recipe(_version("a", share=0.5), _version("b", share=0.5)))
    assert mix.train["origin"].value_counts().to_dict() == {"a": 20, "b": 20}
    assert mix.stats.query("stage == 'mixture'").set_index("origin")["rows"].to_dict() == {"a": 20, "b": 20}


def test_upsampling_and_caps():
    texts = _save("a", 30, 1), _save("b", 20, 2)
    with pytest.raises(IrisError, match="needs 30: lower total_rows or set upsample"):
        augment.build(_recipe(_version("a", share=0.5), _version("b", share=0.5), total_rows=60))
    mix = augment.build(_recipe(_version("a", share=0.5), _version("b", share=0.5), total_rows=60, upsample=True))
    b_rows = mix.train[mix.train["origin"] == "b"]["messages"].map(lambda m: m[0]["content"])
    assert len(b_rows) == 30 and set(b_rows) == set(texts[1])  # every row once, 10 of them twice
    assert sorted(b_rows.value_counts().tolist()) == [1] * 10 + [2] * 10
    mix = augment.build(_recipe(_version("a", rows=10), _version("b", rows=50)))  # caps: b has only 20
    assert mix.train["origin"].value_counts().to_dict() == {"b": 20, "a": 10}


def test_same_recipe_and_seed_reproduce_the_same_content_hash():
    _save("a", 30, 1)
    recipe = _recipe(_version("a", share=0.6),
                     SourceSpec(name="gen", kind="generated", seed=3, share=0.4,
                                generators=[GeneratorSpec("basic_arithmetic", 12, difficulty=1),
                                            GeneratorSpec("gsm_symbolic", 8)]),
                     total_rows=25, seed=11, eval_fraction=0.2)
    first = augment.main(recipe, "m1")
    augment.main(augment.parse_recipe((first / "recipe.yaml").read_text()), "m2")
    m1, m2 = versions.load_manifest("m1"), versions.load_manifest("m2")
    assert m1["content_hash"] == m2["content_hash"] and m1["kind"] == "augment"
    assert m1["parent"]["versions"] == ["a"] and m1["parent"]["generated"][0]["seed"] == 3
    assert m1["rows"] == {"train": 20, "eval": 5}
    ev = versions.load("m1", split="eval")
    assert ev["origin"].value_counts().to_dict() == {"a": 3, "gen": 2}  # stratified: 15*0.2, 10*0.2
    gen = versions.load("m1")
    assert set(gen[gen["origin"] == "gen"]["origin_detail"]) <= {"basic_arithmetic seed=3 difficulty=1",
                                                                 "gsm_symbolic seed=3"}
    other = augment.build(_recipe(*recipe.sources, total_rows=25, seed=12, eval_fraction=0.2))
    assert versions.content_hash(other.train) != versions.content_hash(versions.load("m1"))
    assert {m["name"] for m in versions.list_versions()} == {"a", "m1", "m2"}  # what Train lists


def test_cross_source_dedup_reports_planted_collisions():
    rng = random.Random(7)
    a = [_text(rng, 60) for _ in range(10)]
    near = a[1].split()
    near[10] = "zzzword"  # one word of 60 changed: 5-gram Jaccard ≈ 0.85
    twin = _text(rng, 60)
    twin_edit = twin.split()
    twin_edit[30] = "qqword"
    b = ["  " + a[0].upper() + "\n", " ".join(near), twin, " ".join(twin_edit)] + [_text(rng, 60) for _ in range(6)]
    versions.save("a", _rows(a)), versions.save("b", _rows(b))
    mix = augment.build(_recipe(_version("a"), _version("b")))
    col = mix.collisions
    assert col[["kind", "across", "kept_origin", "dropped_origin"]].values.tolist() == [
        ["exact", True, "a", "b"], ["near", True, "a", "b"]]
    assert col["dropped_text"].iloc[0] == (b[0] + "\n\nNoted.")[:200]
    assert col["dropped_text"].iloc[1] == " ".join(near)[:200]
    kept_b = set(mix.train[mix.train["origin"] == "b"]["messages"].map(lambda m: m[0]["content"]))
    assert twin in kept_b and " ".join(twin_edit) in kept_b  # near twins within one source both stay
    assert len(mix.train) == 18
    stats = mix.stats.set_index(["stage", "origin"])["rows"].to_dict()
    assert stats[("before dedup", "b")] == 10 and stats[("after dedup", "b")] == 8 and stats[("mixture", "a")] == 10
    tokens = mix.stats.set_index(["stage", "origin"])["tokens"]
    assert tokens[("after dedup", "b")] < tokens[("before dedup", "b")]


def test_generated_rows_explain_and_render_through_llama3_template():
    df = generate([GeneratorSpec("basic_arithmetic", 3), GeneratorSpec("gcd", 2), GeneratorSpec("syllogism", 2),
                   GeneratorSpec("human_eval", 2)], seed=1)
    assert df["generator"].tolist() == ["basic_arithmetic"] * 3 + ["gcd"] * 2 + ["syllogism"] * 2 + ["human_eval"] * 2
    assert df["explanation"].tolist()[:5] == ["computed"] * 5 and set(df["explanation"][5:7]) == {"template"}
    first = df["messages"][0]
    assert first[0]["content"] == "Calculate 5 - 3 - 6." and first[1]["content"] == (
        "Work out 5 - 3 - 6 one operation at a time, multiplication and division first:\n"
        "1. 5 - 3 = 2\n2. 2 - 6 = -4\n\nAnswer: -4")
    assert "Euclid" in df["messages"][3][1]["content"] and "def " in df["messages"][7][1]["content"]
    tok = tokenizers.load("llama-3")
    for messages in df["messages"]:
        text = tok.apply_chat_template(list(messages), tokenize=False)
        assert text.count("<|start_header_id|>assistant<|end_header_id|>") == 1
        assert messages[0]["content"] in text and messages[1]["content"] in text


def test_generated_rows_render_through_embedded_smollm2_template(home_with_model):
    from core.models import EMBEDDED_ID

    tok = tokenizers.load(EMBEDDED_ID)
    df = generate([GeneratorSpec("gsm_symbolic", 2), GeneratorSpec("fraction_simplification", 2)], seed=1)
    for messages in df["messages"]:
        text = tok.apply_chat_template(list(messages), tokenize=False)
        assert "<|im_start|>assistant\n" + messages[1]["content"] + "<|im_end|>" in text
        assert messages[1]["content"].rstrip().splitlines()[-1].startswith("Answer: ")


def test_generation_is_seeded_and_difficulty_follows_curriculum():
    a = generate([GeneratorSpec("basic_arithmetic", 5, difficulty=0)], seed=4)
    b = generate([GeneratorSpec("basic_arithmetic", 5, difficulty=0)], seed=4)
    assert versions.content_hash(a) == versions.content_hash(b)
    easy = [m[0]["content"] for m in a["messages"]]
    assert all(len(re.findall(r"\d+", q)) == 2 and max(re.findall(r"\d+", q), key=len) in "0123456789"
               for q in easy)  # level 0: two one-digit terms
    with pytest.raises(IrisError, match="no difficulty setting"):
        generate([GeneratorSpec("list_functions", 2, difficulty=1)], seed=0)


def test_bad_inputs_raise_one_clear_error_and_write_nothing(tmp_path):
    _save("a", 10, 1)
    with pytest.raises(IrisError, match="add up to 0.9, not 1"):
        _recipe(_version("a", share=0.5), _version("b", share=0.4))
    with pytest.raises(IrisError, match="`name` 'gsm_symbolc' is not a known generator: did you mean gsm_symbolic"):
        augment.parse_recipe("sources:\n- {name: g, kind: generated, generators: [{name: gsm_symbolc, count: 3}]}\n")
    with pytest.raises(IrisError, match="give every source a share, or none"):
        _recipe(_version("a", share=1.0), _version("b"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    odd = tmp_path / "odd.csv"
    odd.write_text("foo,bar\n1,2\n")
    for path, message in [(empty, "source 'e': empty.jsonl is empty"), (odd, "source 'e': no known dataset shape")]:
        with pytest.raises(IrisError, match=message):
            augment.main(_recipe(_version("a"), SourceSpec(name="e", kind="file", path=str(path))), "never")
    with pytest.raises(IrisError, match="dataset version 'nope' does not exist"):
        augment.main(_recipe(_version("nope")), "never")
    assert sorted(p.name for p in datasets_dir().iterdir()) == ["a"]


def test_cli_runs_a_recipe_and_rejects_bad_ratios(tmp_path, iris_home):
    _save("a", 12, 1)
    good = tmp_path / "r.yaml"
    good.write_text("sources:\n- {name: a, kind: version, version: a, rows: 5}\n"
                    "- {name: code, kind: generated, seed: 2, generators: [{name: human_eval, count: 3}]}\n")
    out = subprocess.run([sys.executable, "-m", "core.data", "augment", str(good), "--name", "mix"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(8 train / 0 eval rows)" in out.stdout
    assert versions.load("mix")["origin"].value_counts().to_dict() == {"a": 5, "code": 3}
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n- {name: a, kind: version, version: a, share: 0.5}\n"
                   "- {name: b, kind: version, version: a, share: 0.6}\n")
    out = subprocess.run([sys.executable, "-m", "core.data", "augment", str(bad), "--name", "mix2"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == ("error: the sources' `share` values add up to 1.1, not 1: a 0.5, b 0.6.")
    assert not versions.exists("mix2")


def test_example_recipe_sample_plus_500_math_rows_saves_a_trainable_version():
    recipe = augment.load_recipe_file(REPO_ROOT / "data" / "recipes" / "sample_plus_math.yaml")
    gen = next(s for s in recipe.sources if s.kind == "generated")
    assert sum(g.count for g in gen.generators) == 500
    folder = augment.main(recipe, "sample-plus-math")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["name"] in [m["name"] for m in versions.list_versions()]
    rows = pd.concat([versions.load("sample-plus-math"), versions.load("sample-plus-math", split="eval")])
    counts = rows["origin"].value_counts().to_dict()
    assert counts["math-logic"] == manifest["steps"][-2]["per_origin"]["math-logic"] >= 490  # a few may collide
    assert set(rows["origin"]) == {"finetome-sample", "math-logic"}
    assert Path(folder / "recipe.yaml").exists() and augment.load_recipe_file(folder / "recipe.yaml") == recipe


def test_source_versions_eval_splits_stay_held_out_and_never_reach_train():
    rng = random.Random(7)
    a_train, a_eval, b_texts = [_text(rng) for _ in range(20)], [_text(rng) for _ in range(5)], [_text(rng) for _ in range(9)]
    versions.save("a", _rows(a_train), eval_df=_rows(a_eval))
    versions.save("b", _rows(b_texts + a_eval[:2]))  # b carries two of a's held-out rows
    mix = augment.build(_recipe(_version("a", share=0.5), _version("b", share=0.5), eval_fraction=0.0))
    firsts = lambda df: {m[0]["content"] for m in df["messages"]}  # noqa: E731
    assert firsts(mix.eval) == set(a_eval) and set(mix.eval["origin"]) == {"a"}  # held out by default
    assert not firsts(mix.train) & set(a_eval)  # neither a's own eval rows nor b's copies of them are trained on
    assert sorted(mix.train["origin"].value_counts().tolist()) == [9, 9]  # b has 9 left after dedup
    line = augment.resolution(mix)
    assert "a: 9 of 20 rows (share 0.5)" in line and "b: 9 of 9 rows (share 0.5)" in line
    assert "b's 9 rows at share 0.5 limit it" in line and "5 eval rows of the source versions stay held out" in line
    off = augment.build(_recipe(_version("a"), _version("b"), keep_eval_splits=False))
    assert off.eval is None  # the old behaviour, now only when asked for
