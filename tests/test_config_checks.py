"""Every config a user writes is checked: one sentence naming the field, non-zero exit, nothing written (#29).

Each table feeds broken variants of one config type through the same entry point its CLI uses and
asserts (a) the message names the field (and the value where there is one), (b) the CLI exits 2 where
there is a CLI, and (c) not one file appeared in IRIS_HOME.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core import versions
from core.errors import IrisError
from core.paths import REPO_ROOT, iris_home


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(call, needles: list[str], home: Path) -> str:
    """Run `call`, expect a user error (IrisError, or SystemExit 2 from a CLI), return its message; assert
    that every needle is in it and that nothing was written under `home`."""
    before = files_under(home)
    with pytest.raises((IrisError, SystemExit)) as info:
        call()
    if info.type is SystemExit:
        assert info.value.code == 2
    assert files_under(home) == before, "a refused config wrote something"
    return str(info.value)


def check_message(message: str, needles: list[str]) -> None:
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "Traceback" not in message and message.count("\n") == 0


# ---------------------------------------------------------------- training YAML (python -m core.train)

TRAIN_OK = "base_model: smollm2-135m-instruct\ndataset: toy\nmax_steps: 2\n"
TRAIN_BAD = [
    (TRAIN_OK + "learning_rate: fast\n", ["`learning_rate`", "'fast'", "number"]),
    (TRAIN_OK + "learning_rate: 5\n", ["`learning_rate`", "5", "below 1"]),
    (TRAIN_OK + "lora_r: 0\n", ["`lora_r`", "0", "at least 1"]),
    (TRAIN_OK + "lora_r: 100000\n", ["`lora_r`", "100000", "at most 4096"]),
    (TRAIN_OK + "batch_size: two\n", ["`batch_size`", "'two'", "whole number"]),
    (TRAIN_OK + "packing: maybe\n", ["`packing`", "'maybe'", "true or false"]),
    (TRAIN_OK + "learnig_rate: 0.001\n", ["`learnig_rate`", "did you mean `learning_rate`"]),
    ("base_model: smollm2-135m-instruct\nmax_steps: 2\n", ["`dataset`", "required", "missing"]),
    (TRAIN_OK + "optimizer: adam\n", ["`optimizer`", "'adam'", "adamw_torch"]),
    (TRAIN_OK + "target_modules: {q: 1}\n", ["`target_modules`", "list"]),
    (TRAIN_OK + "run_name: ../../escape\n", ["`run_name`", "'../../escape'", "letters, digits"]),
    (TRAIN_OK + "max_seq_length: 8\n", ["`max_seq_length`", "8", "at least 16"]),
    (TRAIN_OK + "lora_dropout: 1.5\n", ["`lora_dropout`", "1.5"]),
    (TRAIN_OK + "  indented: wrongly\n", ["line 4, column 11", "YAML syntax error"]),
    ("- a list\n- not a mapping\n", ["must be a mapping of TrainConfig fields"]),
]


@pytest.mark.parametrize("text, needles", TRAIN_BAD, ids=[n[0] for _, n in TRAIN_BAD])
def test_broken_training_configs_are_refused_by_the_cli(text, needles, tmp_path, capsys):
    from core.train.__main__ import cli

    home = iris_home()
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    refused(lambda: cli([str(path)]), needles, home)
    err = capsys.readouterr().err
    check_message(err.strip().removeprefix("error: "), needles)
    if "syntax" in needles[-1]:
        assert str(path) in err  # the file, then line and column


def test_a_number_as_text_exits_2_with_one_line_in_a_real_process(tmp_path, iris_home):
    path = tmp_path / "fast.yaml"
    path.write_text(TRAIN_OK + "learning_rate: fast\n")
    out = subprocess.run([sys.executable, "-m", "core.train", str(path)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: `learning_rate` must be a number (e.g. 0.5 or 2e-4), got 'fast'.")
    assert not (iris_home / "runs").exists() or not any((iris_home / "runs").iterdir())


def test_numbers_yaml_reads_as_text_still_work():
    """PyYAML reads `2e-4` (no dot) as a string: the check turns it into the number it means."""
    from core.config import from_yaml
    from core.train.config import TrainConfig

    cfg = from_yaml(TrainConfig, TRAIN_OK + "learning_rate: 2e-4\nlora_r: '8'\npacking: 'yes'\n")
    assert (cfg.learning_rate, cfg.lora_r, cfg.packing) == (2e-4, 8, True)


def _toy_version(name: str = "toy") -> None:
    recs = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]
    versions.save(name, pd.DataFrame(recs))


def test_target_modules_the_model_lacks_are_named_before_launch(tiny_llama3_dir):
    from core.train import lora
    from core.train.config import TrainConfig
    from core.train.estimate import linear_module_names

    _toy_version()
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= \
        linear_module_names(tiny_llama3_dir)
    cfg = TrainConfig(base_model=str(tiny_llama3_dir), dataset="toy", max_steps=2, max_seq_length=64,
                      target_modules=["q_proj", "qkv_proj"], run_name="never")
    msg = refused(lambda: lora.start(cfg), [], iris_home())
    check_message(msg, ["`target_modules`", "'qkv_proj'", "does not have", "down_proj, gate_proj, k_proj"])
    assert "'q_proj'" not in msg.split("does not have")[0]  # only the missing one is blamed


def test_the_estimate_blames_lora_r_when_lora_r_drives_the_cost():
    from core.train.config import TrainConfig
    from core.train.estimate import GIB, Device, estimate

    _toy_version()
    cpu = Device("cpu", 1, 8 * GIB, "CPU", 2)
    cfg = TrainConfig(base_model="unsloth/Llama-3.2-1B-Instruct", dataset="toy", lora_r=512, lora_alpha=512,
                      max_seq_length=256, batch_size=1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "gate_proj", "up_proj", "down_proj"])
    problems = " ".join(estimate(cfg, cpu).problems)
    assert "lower lora_r (512)" in problems and "lora_r 512 is above 512" not in problems
    assert "batch_size" not in problems
    long = TrainConfig(base_model="unsloth/Llama-3.2-1B-Instruct", dataset="toy", lora_r=8, max_seq_length=16384,
                       batch_size=8, gradient_checkpointing=False)
    assert "lower batch_size (8) or max_seq_length (16384)" in " ".join(estimate(long, cpu).problems)
    wide = TrainConfig(base_model="unsloth/Llama-3.2-1B-Instruct", dataset="toy", lora_r=1024, lora_alpha=1024)
    assert any(p.startswith("lora_r 1024 is above 512") for p in estimate(wide, cpu).problems)


# ---------------------------------------------------------------- data recipes (python -m core.data filter)

RECIPE_BAD = [
    ("steps: [{kind: lenght}]", ["`kind`", "'lenght'", "did you mean 'length'"]),
    ("steps: [{kind: length, params: {max_tokens: lots}}]", ["`length.params.max_tokens`", "'lots'", "whole number"]),
    ("steps: [{kind: length, params: {max_tokenz: 10}}]", ["`length.params.max_tokenz`", "max_tokens"]),
    ("steps: [{kind: near_dedup, params: {threshold: 2}}]", ["`near_dedup.params.threshold`", "2", "at most 1"]),
    ("steps: [{kind: repetition, params: {max_ratio: -0.5}}]", ["`repetition.params.max_ratio`", "-0.5"]),
    ("eval_fraction: 1.5\nsteps: []", ["`eval_fraction`", "1.5", "below 1"]),
    ("steps: {kind: length}", ["`steps`", "must be a list"]),
    ("stpes: []", ["`stpes`", "did you mean `steps`"]),
    ("steps: [{enabled: true}]", ["`steps[0].kind`", "missing"]),
    ("steps: [{kind: length, enabled: sometimes}]", ["`steps[0].enabled`", "'sometimes'", "true or false"]),
    ("steps: [{kind: length}, {kind: length}]", ["`steps`", "length", "more than once"]),
    ("steps:\n- kind: length\n  params: {max_tokens: 3\n", ["line", "column", "YAML syntax error"]),
    ("tokenizer: no-such-model\nsteps: []", ["`tokenizer`", "'no-such-model'", "llama-3"]),
]


@pytest.mark.parametrize("text, needles", RECIPE_BAD, ids=[n[0] for _, n in RECIPE_BAD])
def test_broken_data_recipes_are_refused(text, needles, tmp_path):
    from core.data.__main__ import main, parse_args

    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    check_message(refused(lambda: main(parse_args(["filter", "v", "--recipe", str(path), "--name", "out"])),
                          needles, iris_home()), needles)


# ---------------------------------------------------------------- augment recipes (python -m core.data augment)

GEN = "sources:\n- {name: g, kind: generated, generators: [%s]}\n"
AUGMENT_BAD = [
    ("sources: []", ["`sources`", "empty"]),
    ("sources: [{name: a, kind: vers, version: x}]", ["sources[0]", "`kind`", "'vers'", "did you mean 'version'"]),
    (GEN % "{name: basic_arithmetik, count: 3}", ["generators[0]", "`name`", "'basic_arithmetik'", "basic_arithmetic"]),
    (GEN % "{name: basic_arithmetic, count: many}", ["`sources[0].generators[0].count`", "'many'", "whole number"]),
    (GEN % "{name: basic_arithmetic, count: 0}", ["`count`", "0", "at least 1"]),
    ("sources: [{name: a, kind: version, version: x, share: 2}]", ["`share`", "2", "at most 1"]),
    ("sources: [{name: a, kind: version}]", ["`version`", "empty"]),
    ("sources: [{name: a, kind: version, version: ../../x}]", ["`version`", "'../../x'"]),
    ("sources: [{name: a, kind: version, version: x, rowz: 3}]", ["`sources[0].rowz`", "did you mean `rows`"]),
    ("total_rows: lots\nsources: [{name: a, kind: version, version: x}]", ["`total_rows`", "'lots'"]),
    ("sources:\n- {name: a, kind: version, version: x, share: 0.5}\n- {name: b, kind: version, version: y, "
     "share: 0.6}", ["`share`", "1.1, not 1"]),
    ("near_threshold: 0\nsources: [{name: a, kind: version, version: x}]", ["`near_threshold`", "0"]),
]


@pytest.mark.parametrize("text, needles", AUGMENT_BAD, ids=[n[0] for _, n in AUGMENT_BAD])
def test_broken_augment_recipes_are_refused(text, needles, tmp_path):
    from core.data.__main__ import main, parse_args

    path = tmp_path / "mix.yaml"
    path.write_text(text)
    check_message(refused(lambda: main(parse_args(["augment", str(path), "--name", "mix"])), needles, iris_home()),
                  needles)


# ---------------------------------------------------------------- evaluation plans (python -m core.evaluate)

PLAN_OK = "name: p\nmodels: [smollm2-135m-instruct]\n"
PLAN_BAD = [
    (PLAN_OK + "max_new_tokens: long\n", ["`max_new_tokens`", "'long'", "whole number"]),
    (PLAN_OK + "max_new_tokens: 0\n", ["`max_new_tokens`", "0", "at least 1"]),
    (PLAN_OK + "settings: [A, Z]\n", ["`settings`", "'Z'", "neither a preset"]),
    (PLAN_OK + "custom_settings: {g: {temprature: 0}}\n", ["`custom_settings.g.temprature`", "temperature"]),
    (PLAN_OK + "custom_settings: {g: {temperature: hot}}\n", ["custom_settings.g", "`temperature`", "'hot'"]),
    (PLAN_OK + "question_set: no_such_set\n", ["question set 'no_such_set' does not exist", "boolean_logic"]),
    ("name: p\nmodels: [no-such-model]\n", ["no-such-model", "no longer exist"]),
    ("name: ../../p\nmodels: [smollm2-135m-instruct]\n", ["`name`", "'../../p'"]),
    (PLAN_OK + "modles: [x]\n", ["`modles`", "did you mean `models`"]),
    ("models: [smollm2-135m-instruct]\n", ["`name`", "missing"]),
    (PLAN_OK + "seed: [1\n", ["line 4, column 1", "YAML syntax error"]),
    (PLAN_OK + "heldout_rows: -3\n", ["`heldout_rows`", "-3"]),
]


@pytest.mark.parametrize("text, needles", PLAN_BAD, ids=[n[0] for _, n in PLAN_BAD])
def test_broken_evaluation_plans_are_refused_by_the_cli(text, needles, tmp_path, capsys):
    from core.evaluate.__main__ import cli
    from core.evaluate.questions import list_sets

    list_sets()  # seeds the bundled question set into the workspace (before the snapshot)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    refused(lambda: cli([str(path)]), needles, iris_home())
    check_message(capsys.readouterr().err.strip(), needles)


# ---------------------------------------------------------------- question sets (Evaluate page, save_set)

QSET_BAD = [
    ("questions:\n  - {id: a, question: Why}\n", "yaml", ["`questions[1].reference`", "missing"]),
    ("questions:\n  - {question: Why, reference: Because.}\n", "yaml", ["`questions[1].id`"]),
    ("questions:\n  - {id: a, question: [1, 2], reference: r}\n", "yaml", ["`questions[1].question`", "[1, 2]"]),
    ("questions:\n  - {id: a, question: q, reference: r, answer: x}\n", "yaml", ["`questions[1].answer`"]),
    ("questions:\n  - {id: a, question: q, reference: r}\n  - {id: a, question: q2, reference: r2}\n", "yaml",
     ["`questions[2].id`", "'a'", "twice"]),
    ("questons: []\n", "yaml", ["`questons`", "questions"]),
    ("questions: []\n", "yaml", ["no questions"]),
    ("questions: [5]\n", "yaml", ["`questions[1]`", "5"]),
    ("questions:\n - id: a\n  question: b\n", "yaml", ["line 3, column 3", "YAML syntax error"]),
    ('{"id": "a", "question": "q", "reference": "r"}\n{"id": "b", "question": \n', "jsonl",
     ["line 2, column", "not valid JSON"]),
]


@pytest.mark.parametrize("text, fmt, needles", QSET_BAD, ids=[n[0] for _, _, n in QSET_BAD])
def test_broken_question_sets_are_refused(text, fmt, needles):
    from core.evaluate import questions

    questions.list_sets()
    check_message(refused(lambda: questions.save_set("bad", text, fmt), needles, iris_home()), needles)


# ---------------------------------------------------------------- decoding settings

DECODING_BAD = [
    ("temperature: hot", ["`temperature`", "'hot'", "number"]),
    ("temperature: 9", ["`temperature`", "9", "at most 5"]),
    ("top_p: 0", ["`top_p`", "above 0"]),
    ("top_k: -1", ["`top_k`", "-1", "at least 0"]),
    ("repeat_penalty: 3", ["`repeat_penalty`", "3", "at most 2"]),
    ("max_new_tokens: 0", ["`max_new_tokens`", "0", "at least 1"]),
    ("seed: 1.5", ["`seed`", "1.5", "whole number"]),
    ("temprature: 0.3", ["`temprature`", "did you mean `temperature`"]),
    ("temperature: [0.2]", ["`temperature`", "[0.2]"]),
    ("temperature: 0.2\n  top_p: 0.5", ["line 2, column", "YAML syntax error"]),
]


@pytest.mark.parametrize("text, needles", DECODING_BAD, ids=[n[0] for _, n in DECODING_BAD])
def test_broken_decoding_settings_are_refused(text, needles):
    from core.inference import DecodingSettings

    check_message(refused(lambda: DecodingSettings.from_yaml(text), needles, iris_home()), needles)


# ---------------------------------------------------------------- export options (python -m core.export --config)

EXPORT_BAD = [
    ("source: r\nquants: [q3_x]\n", ["`quants[0]`", "'q3_x'", "q4_k_m, q5_k_m, q8_0, f16"]),
    ("source: r\nquants: [q4_k_n]\n", ["'q4_k_n'", "did you mean 'q4_k_m'"]),
    ("source: r\nmode: both\n", ["`mode`", "'both'", "merged, lora"]),
    ("source: r\nmerge_dtype: f32\n", ["`merge_dtype`", "'f32'"]),
    ("source: r\nname: ../../x\n", ["`name`", "'../../x'"]),
    ("source: r\nram_budget_gb: plenty\n", ["`ram_budget_gb`", "'plenty'", "number"]),
    ("source: r\nram_budget_gb: -1\n", ["`ram_budget_gb`", "-1"]),
    ("source: r\ncheckpoint: last\n", ["`checkpoint`", "'last'", "whole number"]),
    ("source: r\nthreads: -2\n", ["`threads`", "-2"]),
    ("source: r\npush_repo: not a repo\n", ["`push_repo`", "'not a repo'", "namespace/name"]),
    ("quants: [q8_0]\n", ["`source`", "missing"]),
    ("source: r\nverfy: false\n", ["`verfy`", "did you mean `verify`"]),
    ("source: no-such-run\n", ["no-such-run", "neither a run"]),
    ("source: r\nquants: [q8_0\n", ["line", "column", "YAML syntax error"]),
]


@pytest.mark.parametrize("text, needles", EXPORT_BAD, ids=[n[0] for _, n in EXPORT_BAD])
def test_broken_export_options_are_refused_by_the_cli(text, needles, tmp_path, capsys):
    from core.export.__main__ import cli

    path = tmp_path / "export.yaml"
    path.write_text(text)
    refused(lambda: cli(["--config", str(path)]), needles, iris_home())
    check_message(capsys.readouterr().err.strip(), needles)
