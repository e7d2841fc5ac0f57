"""An app restart with jobs running: a fresh session (no session state, as after `streamlit run` starts anew)
finds every running job from its folder — Home lists a training run, an export, an evaluation and a data
filter job as running, the Train and Export pages reattach their job panels to the running one, and Stop
there stops it.

The four jobs are real processes launched by `core.jobs.launch` that keep the job protocol (status.json,
STOP file) for as long as the test needs, so what is tested is the app's side: listing and reattaching."""
from __future__ import annotations

import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import jobs
from core.config import save_yaml
from core.paths import evals_dir, exports_dir, iris_home, runs_dir
from tests.test_train import tiny_cfg, wait_for

# a job as the real ones behave: running with a step count, polling STOP between steps (train, evaluate,
# filter); a kill ends it hard (export)
JOB = """
import os, sys, time
from pathlib import Path
from core import jobs
folder = Path(sys.argv[1])
jobs.update_status(folder, state="running", pid=os.getpid(), step=0, total=500, message="working")
for step in range(1, 501):
    if jobs.stop_requested(folder):
        jobs.update_status(folder, state="stopped", message=f"stopped at step {step}")
        break
    jobs.update_status(folder, step=step)
    time.sleep(0.2)
"""


def _launch(folder):
    folder.mkdir(parents=True, exist_ok=True)
    jobs.launch(folder, [sys.executable, "-c", JOB, str(folder)])
    return folder


def progress_text(at: AppTest) -> str:
    return " ".join(p.proto.text for p in at.get("progress"))


def test_a_fresh_session_finds_and_reattaches_to_every_running_job():
    run = runs_dir() / "long-run"
    run.mkdir(parents=True)
    save_yaml(tiny_cfg(Path("models/tiny"), run_name="long-run", max_steps=500), run / "config.yaml")
    folders = {"training run": _launch(run), "export": _launch(exports_dir() / "exp-1"),
               "evaluation": _launch(evals_dir() / "plan-1"),
               "data filter": _launch(iris_home() / "work" / "job-filter-big-filtered")}
    try:
        wait_for(lambda: all(jobs.read_status(f).get("step") for f in folders.values()), 60, "four running jobs")
        listed = {(j["kind"], j["name"], j["state"]) for j in jobs.active_jobs()}
        assert listed == {("training run", "long-run", "running"), ("export", "exp-1", "running"),
                          ("evaluation", "plan-1", "running"), ("data filter", "big-filtered", "running")}

        home = AppTest.from_file("../pages/home.py", default_timeout=120).run()
        assert not home.exception
        table = next(d.value for d in home.dataframe if "kind" in d.value.columns)  # "Running now"
        assert sorted(zip(table["kind"], table["name"], table["state"])) == sorted(listed)

        train = AppTest.from_file("../pages/train.py", default_timeout=120).run()  # a new session: no state
        assert not train.exception and progress_text(train).startswith("running: ")
        train.button(key="stop-long-run").click().run()
        assert jobs.wait(run, timeout_s=30)["state"] == "stopped"

        export = AppTest.from_file("../pages/export.py", default_timeout=120).run()
        assert not export.exception and "running: " in progress_text(export)
        export.button(key="stop-exp-1").click().run()  # an export stops hard (kill)
        assert jobs.wait(folders["export"], timeout_s=30)["state"] == "stopped"

        assert {j["kind"] for j in jobs.active_jobs()} == {"evaluation", "data filter"}
    finally:
        for folder in folders.values():
            jobs.kill(folder)
