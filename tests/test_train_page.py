"""Train page driven with AppTest: estimate, launch a real run, watch its progress, stop it gracefully.
And the CPU-quick preset on the bundled FineTome sample, launched from the page, running to the end."""
from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs, runs
from core.paths import models_dir
from tests.test_train import toy_version, wait_for

PAGE = "../pages/train.py"
QUICK = "CPU quick: SmolLM2-135M"


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def progress_text(at: AppTest) -> str:
    return " ".join(p.proto.text for p in at.get("progress"))


def test_launch_watch_and_stop_from_the_page(tiny_llama3_dir):
    tiny = models_dir() / "tiny-llama"
    shutil.copytree(tiny_llama3_dir, tiny)
    toy_version(rows=60)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception and at.selectbox[0].value == QUICK
    k = f"{QUICK}-0-"
    at.selectbox(key=k + "model").set_value(str(tiny))
    at.number_input(key=k + "seq").set_value(64)
    at.number_input(key=k + "steps").set_value(40)
    at.number_input(key=k + "acc").set_value(1)
    at.number_input(key=k + "eval").set_value(0)
    at.text_input(key=k + "name").set_value("from-page")
    at.run()
    assert any("Estimate:" in c.value for c in at.caption) and not at.error
    button(at, "Launch").click().run()
    assert "Launched **from-page**" in at.success[0].value
    run_dir = runs.run_path("from-page")
    wait_for(lambda: (jobs.read_status(run_dir).get("step") or 0) >= 2, what="step 2")
    at.run()
    assert "running: " in progress_text(at) and "/40 steps" in progress_text(at)  # ui.progress.job_panel's line
    at.button(key="stop-from-page").click().run()
    status = jobs.wait(run_dir, timeout_s=180)
    assert status["state"] == "stopped" and status["step"] < 40
    assert runs.list_checkpoints(run_dir) == [status["step"]]  # the stop saved one
    at.run()
    assert progress_text(at).startswith("stopped") and at.selectbox(key="ckpt").value == status["step"]
    assert len(at.get("plotly_chart")) >= 1 and not at.exception


@pytest.mark.slow
def test_cpu_quick_preset_on_the_bundled_sample_completes(home_with_model):
    from core.data.store import import_source

    # 0.5% held out (15 of the sample's 3,077 rows): enough for an eval pass, a fraction of the 2% one's time.
    import_source("sample", "finetome-sample", eval_fraction=0.005, seed=0)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert at.selectbox(key=f"{QUICK}-0-data").value == "finetome-sample"
    # The preset's model, data and settings; 4 of its 30 steps with the eval pass moved from step 10 to the
    # last step keep CI short and still cover every stage (load, train steps, eval, save the adapter).
    at.number_input(key=f"{QUICK}-0-steps").set_value(4).run()
    at.number_input(key=f"{QUICK}-0-eval").set_value(4).run()
    button(at, "Launch").click().run()
    assert at.success and not at.error
    run_dir = runs.run_path(runs.list_runs()[0]["run"])
    status = jobs.wait(run_dir, timeout_s=1100, poll_s=0.2)
    assert status["state"] == "completed" and status["step"] == 4, jobs.tail(run_dir / "train.log")
    losses = [m["loss"] for m in runs.read_metrics(run_dir) if "loss" in m]
    assert len(losses) == 4 and [m["step"] for m in runs.read_metrics(run_dir) if "eval_loss" in m] == [4]
    assert (runs.adapter_dir(run_dir) / "adapter_model.safetensors").exists()
    at.run()
    assert progress_text(at).startswith("completed")


def test_lab2_preset_offline_is_refused_at_the_estimate():
    from core import hub, models

    if hub.reachable():
        pytest.skip("the hub is reachable here: the Lab 2 model could be fetched")
    toy_version("finetome-sample")
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.selectbox[0].set_value("Lab 2: Llama-3.2-1B on FineTome").run()
    assert not at.exception
    said = [e.value for e in at.error]
    assert models.offline_sentence("unsloth/Llama-3.2-1B-Instruct") in said  # the sentence the run's start gives
    assert button(at, "Launch").disabled


def test_learning_rate_axis_keeps_room_for_its_labels():
    import json

    from core.train.curves import curves_figure

    run = runs.run_path("lr-demo")
    run.mkdir(parents=True)
    rows = [{"step": s, "loss": 2.5 - 0.05 * s, "lr": 2e-4 * (1 - s / 40)} for s in range(1, 11)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = curves_figure(["lr-demo"], "lr-demo")
    assert [t.name for t in fig.data] == ["loss", "learning rate"]
    assert fig.layout.yaxis2.automargin and fig.layout.yaxis2.side == "right"  # labels push the plot, not clip
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0  # the legend sits under the plot
