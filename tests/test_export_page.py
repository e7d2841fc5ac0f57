"""The Export page, driven with AppTest: no runs, pre-flight of a run, launch, progress, report."""
from __future__ import annotations

from pathlib import Path

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
    assert "Export pg-ckpt3" in [s.value for s in at.subheader]  # the live panel of the launched job
    expander = next(e for e in at.expander if e.label.startswith("pg-ckpt3 — completed"))
    table = expander.dataframe[0].value
    assert list(table["quant"]) == ["q8_0"] and table["top1_agreement"][0] >= 0.9


def _finished_export(name: str, state: str = "completed", run: str = "good") -> Path:
    """An export folder as core.export leaves it when done: status, export.json, report.json with verdicts."""
    from core.export.verify import judged
    from core.paths import write_json

    folder = exports_dir() / name
    folder.mkdir(parents=True)
    (folder / f"{name}-q8_0.gguf").write_bytes(b"GGUF")
    write_json(folder / "status.json", {"state": state, "step": 4, "total": 4})
    write_json(folder / "export.json", {"name": name, "files": [f"{name}-q8_0.gguf"], "quants": ["q8_0"],
                                        "source": {"run": run, "checkpoint": None, "dataset": "d", "base_model": "b"}})
    write_json(folder / "report.json", {"prompts": 8, "reference": "transformers fp32", "quants": {
        "q8_0": judged("q8_0", {"top1_agreement": 0.8774, "logit_correlation": 0.9875, "positions": 120})}})
    return folder


def test_reload_defaults_to_an_exportable_run_and_always_lists_exports(tiny_llama3_dir):
    """#27 Low: after a reload the page picked the newest run even when it had nothing to export, failed,
    and hid the exports list and reports. Now it picks a run with an adapter, and the list shows anyway."""
    import os
    import time

    make_run(runs_dir(), "good", str(tiny_llama3_dir), tiny_llama3_dir, checkpoints=(), final=True)
    _finished_export("good")
    broken = runs_dir() / "lab2-offline-try"  # newest, and never saved a checkpoint
    broken.mkdir()
    (broken / "config.yaml").write_text(f"base_model: {tiny_llama3_dir}\ndataset: d\n")
    os.utime(broken, (time.time() + 10, time.time() + 10))
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox[0].value == "good"
    at.selectbox[0].set_value("lab2-offline-try").run()
    assert any("no complete checkpoint" in e.value for e in at.error)
    expander = next(e for e in at.expander if e.label.startswith("good — completed"))
    table = expander.dataframe[0].value
    # #18: a verdict per quant against the quant table's thresholds, and what the numbers mean
    assert table["verdict"].tolist() == ["fail"] and "top-1 0.877 < 0.90" in table["why"][0]
    assert any("top-1 agreement: the share of positions" in c.value for c in expander.caption)


def test_home_counts_only_finished_exports():
    """#27 Low: Home said 'Exports 5' while its graph drew 4: a died export (no export.json) was counted."""
    from core import lineage

    _finished_export("done")
    died = exports_dir() / "died"
    died.mkdir()
    (died / "export.yaml").write_text("source: good\n")
    (died / "status.json").write_text('{"state": "running", "pid": 999999999}')  # its process is gone
    at = AppTest.from_file("../pages/home.py", default_timeout=60).run()
    assert not at.exception
    exports_metric = next(m for m in at.metric if m.label == "Exports")
    drawn = {b for _, b in lineage.graph_edges() if b.startswith("export:")}
    assert exports_metric.value == "1" and drawn == {"export:done"}


@pytest.mark.slow
def test_exports_list_follows_status_live_in_the_browser(home_with_model):
    """#18: the Exports list said 'queued — no GGUF yet' after the job had completed; it now redraws every 2 s."""
    import subprocess
    import sys

    from playwright.sync_api import expect, sync_playwright

    from core.paths import write_json
    from tests.e2e_harness import CHROMIUM, CHROMIUM_ARGS, running_app

    home = home_with_model  # the embedded model is linked in: `make app` has nothing to materialise
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # stands for the export's process
    folder = exports_dir() / "live"
    folder.mkdir(parents=True)
    write_json(folder / "status.json", {"state": "running", "pid": job.pid, "step": 1, "total": 3})
    try:
        with running_app(home) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/export")
            expect(page.get_by_text("live — running — no GGUF yet")).to_be_visible(timeout=120_000)
            (folder / "live-q8_0.gguf").write_bytes(b"GGUF")
            write_json(folder / "export.json", {"name": "live", "files": ["live-q8_0.gguf"], "source": {}})
            write_json(folder / "status.json", {"state": "completed", "pid": job.pid, "step": 3, "total": 3})
            expect(page.get_by_text("live — completed — live-q8_0.gguf")).to_be_visible(timeout=15_000)
            browser.close()
    finally:
        job.kill()
        job.wait()
