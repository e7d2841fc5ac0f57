"""Names and secrets cannot escape (#22): every name a user types is refused or made safe, nothing is written
outside IRIS_HOME, tokens never reach a file or a message; a file that changes shape says which row."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.errors import IrisError
from core.paths import iris_home, safe_filename

BAD_NAMES = ["../../x", "/tmp/iris-escape", "a/b", "..", "bad\x00name", "bad\nname", "name\n", "x" * 300, ""]


def tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _makers():
    from core.chat.transcripts import save_chat
    from core.evaluate.plan import EvalPlan
    from core.evaluate.questions import save_set
    from core.export.config import ExportConfig
    from core.inference import DecodingSettings
    from core.train.config import TrainConfig

    return {
        "run": lambda n: TrainConfig(base_model="m", dataset="d", run_name=n or "\x00"),
        "export": lambda n: ExportConfig(source="r", name=n or "\x00"),
        "transcript": lambda n: save_chat("smollm2-135m-instruct", "", DecodingSettings(), [], transcript_id=n or "\x00"),
        "evaluation": lambda n: EvalPlan(name=n),
        "question set": lambda n: save_set(n, "questions: [{id: a, question: q, reference: r}]\n"),
        "dataset version": lambda n: TrainConfig(base_model="m", dataset=n or "\x00"),
    }


@pytest.mark.parametrize("kind", ["run", "export", "transcript", "evaluation", "question set", "dataset version"])
def test_bad_names_are_refused_and_write_nothing(kind, tmp_path):
    make = _makers()[kind]
    home = iris_home()
    outside_before = tree(tmp_path)
    before = tree(home)
    for name in BAD_NAMES:
        with pytest.raises(IrisError, match="is not usable|is empty") as info:
            make(name)
        message = str(info.value)
        assert "\n" not in message and "\x00" not in message and len(message) < 400
    assert tree(home) == before and tree(tmp_path) == outside_before
    assert not (home.parent / "x").exists() and not (home.parent.parent / "x").exists()


def test_upload_names_are_made_safe_and_stay_in_uploads():
    from core.data.view import save_upload

    data = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    names = {"../../x.jsonl": "x.jsonl", "/etc/passwd.jsonl": "passwd.jsonl", "a b\nc.jsonl": "a_b_c.jsonl",
             "nul\x00.jsonl": "nul_.jsonl", "..\\..\\win.jsonl": "win.jsonl"}
    for name, expected in names.items():
        path = save_upload(name, data)
        assert path.parent == iris_home() / "uploads" and path.name == expected
    long = save_upload("y" * 300 + ".jsonl", data)
    assert long.parent == iris_home() / "uploads" and len(long.name) == 100 and long.name.endswith(".jsonl")
    assert sorted(p.name for p in (iris_home() / "uploads").iterdir()) == sorted([*names.values(), long.name])
    assert not (iris_home().parent / "x.jsonl").exists()
    with pytest.raises(IrisError, match="no usable characters"):
        safe_filename("../..")


def test_a_file_that_changes_shape_names_the_row_and_the_shape(tmp_path):
    from core.data.formats import load_source

    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [sharegpt, sharegpt, sharegpt,
                                                       {"instruction": "Add 2 and 2.", "output": "4"}]) + "\n")
    with pytest.raises(IrisError) as info:
        load_source(str(path))
    assert str(info.value) == ("row 4 looks like Alpaca (`instruction` + `output` (+ optional `input`, `system`)), "
                               "but the rows before it are ShareGPT (`conversations` (list of {from, value})): one "
                               "file holds one shape, so split it into one file per shape.")
    alpaca_first = pd.DataFrame([{"instruction": "a", "output": "b"}, {"messages": [{"role": "user", "content": "q"}]}])
    from core.data.formats import normalise

    with pytest.raises(IrisError, match="row 2 looks like OpenAI messages .* rows before it are Alpaca"):
        normalise(alpaca_first)


# ---------------------------------------------------------------- pages show the same sentences (#29, #22)

def test_train_page_refuses_a_run_name_that_escapes():
    from core import versions

    versions.save("toy", pd.DataFrame([{"messages": [{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": "a"}]}]))
    at = AppTest.from_file("../pages/train.py", default_timeout=120).run()
    box = next(t for t in at.text_input if t.label.startswith("Run name"))
    box.set_value("../../x").run()
    assert not at.exception
    assert any(e.value.startswith("`run_name` '../../x' is not usable") for e in at.error)


def test_export_page_refuses_an_export_name_that_escapes(tmp_path, monkeypatch):
    monkeypatch.setenv("IRIS_ALLOWED_DIRS", str(tmp_path))
    at = AppTest.from_file("../pages/export.py", default_timeout=120).run()
    at.radio[0].set_value("a model folder").run()
    at.text_input[0].set_value(str(tmp_path)).run()
    next(t for t in at.text_input if t.label.startswith("Export name")).set_value("../../x").run()
    assert not at.exception
    assert [e.value for e in at.error][0].startswith("`name` (the export folder) '../../x' is not usable")


def test_data_page_shows_a_bad_recipe_value_as_one_sentence():
    from core import versions

    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(4)]
    versions.save("tiny", pd.DataFrame(rows))
    at = AppTest.from_file("../pages/data.py", default_timeout=300).run()
    at.radio[0].set_value("Saved version").run()
    next(b for b in at.button if b.label == "Load").click().run()
    at.number_input(key="near_dedup.threshold").set_value(5.0).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["steps[9]: `near_dedup.params.threshold` is 5.0, out of range: it must be "
                                           "at least 0.05 and at most 1."]  # near_dedup is the recipe's 10th step


def test_evaluate_page_shows_the_question_set_sentence():
    at = AppTest.from_file("../pages/evaluate.py", default_timeout=120).run()
    assert not at.exception
    area = at.text_area[0]
    area.set_value("questions:\n  - {id: a, question: Why}\n").run()
    save = next(b for b in at.button if b.label.lower().startswith("save"))
    save.click().run()
    assert any("`questions[1].reference` is missing or empty" in e.value for e in at.error), \
        [e.value for e in at.error]


# ---------------------------------------------------------------- secrets never land on disk

SECRETS = {"HF_TOKEN": "hf_iristestTOKEN0123456789abcdef", "IRIS_API_KEY": "sk-iris-test-api-key-0123456789",
           "IRIS_PASSWORD": "pw-iris-test-0123456789"}


@pytest.mark.slow
def test_tokens_never_reach_the_workspace_after_a_run(tiny_llama3_dir, monkeypatch, capsys):
    from core import jobs, versions
    from core.train import lora
    from core.train.__main__ import cli as train_cli
    from core.train.config import TrainConfig

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IRIS_HUB_NAMESPACES", "ana")
    recs = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]
    versions.save("toy", pd.DataFrame(recs))
    cfg = TrainConfig(base_model=str(tiny_llama3_dir), dataset="toy", run_name="secret-run", max_steps=2,
                      save_steps=1, batch_size=2, grad_accum=1, max_seq_length=64, lora_r=4,
                      target_modules=["q_proj", "v_proj"], warmup_steps=0, mirror_hub_repo="ana/ckpts")
    run_dir = lora.start(cfg)  # a real subprocess with these variables in its environment, logging to train.log
    status = jobs.wait(run_dir, timeout_s=600)
    assert status["state"] == "completed", jobs.tail(run_dir / "train.log")
    bad = iris_home().parent / "bad.yaml"
    bad.write_text(f"base_model: m\ndataset: {SECRETS['HF_TOKEN']}\n")  # a token pasted in the wrong field
    with pytest.raises(SystemExit):
        train_cli([str(bad)])
    assert SECRETS["HF_TOKEN"] not in capsys.readouterr().err
    files = [p for p in iris_home().rglob("*") if p.is_file()]
    assert {"config.yaml", "status.json", "train.log", "metrics.jsonl"} <= {p.name for p in files}
    assert "hub mirror ana/ckpts skipped" in (run_dir / "train.log").read_text()
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} found in {path}"
