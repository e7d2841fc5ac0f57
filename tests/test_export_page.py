"""The Export page, driven with AppTest: no runs, pre-flight of a run, launch, progress, report."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.paths import exports_dir, runs_dir
from tests.export_helpers import make_run

PAGE = "../pages/export.py"


def test_page_without_runs_says_what_to_do():
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)


def test_page_shows_a_refusal_for_a_missing_model_folder():
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.radio[0].set_value("a model folder").run()
    at.text_input[0].set_value("models/nowhere").run()  # inside IRIS_HOME (check_folder passes), but no model
    assert not at.exception
    assert any("neither a run" in e.value for e in at.error)


@pytest.mark.slow
def test_page_preflight_launch_progress_and_report(home_with_model, tmp_path):
    from tests.helpers import make_tiny_llama

    base = make_tiny_llama(tmp_path / "tiny-smol", tokenizer="smollm2", hidden=64)
    make_run(runs_dir(), "pg", str(base), base, checkpoints=(3,), final=True)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception and not at.error
    assert at.selectbox[0].value == "pg"
    assert at.selectbox[1].options == ["final adapter", "checkpoint-3"]
    at.selectbox[1].set_value("checkpoint-3").run()
    labels = {m.label: m.value for m in at.metric}
    assert set(labels) == {"Peak RAM", "Disk", "Time"} and labels["Peak RAM"].endswith("GB")
    at.multiselect[0].set_value(["q8_0"]).run()
    next(b for b in at.button if b.label == "Export").click().run()
    assert not at.error, [e.value for e in at.error]
    folder = exports_dir() / "pg-ckpt3"
    status = jobs.wait(folder, timeout_s=600)
    assert status["state"] == "completed", jobs.tail(folder / jobs.LOG)
    at.run()
    assert any(s.value.startswith("Export pg-ckpt3: completed") for s in at.subheader)
    expander = next(e for e in at.expander if e.label.startswith("pg-ckpt3"))
    table = expander.dataframe[0].value
    assert list(table["quant"]) == ["q8_0"] and table["top1_agreement"][0] >= 0.9
