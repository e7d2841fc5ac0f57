"""The Evaluate page in Debian's Chromium: it follows a running job without a click, and its log stays free
of Streamlit deprecation warnings. The app is `streamlit run streamlit_app.py` on a free port with a fresh
IRIS_HOME (no `make app`: nothing here needs the materialised model)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from core import jobs
from core.evaluate import scoring
from core.evaluate.answers import read_answers
from core.evaluate.plan import EvalPlan, plan_dir, save_plan
from core.paths import REPO_ROOT
from tests.e2e_harness import CHROMIUM, CHROMIUM_ARGS, free_port
from tests.test_evaluate import fake_answers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@contextlib.contextmanager
def streamlit_app(home):
    port = free_port()
    log_path = home.parent / "app.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless",
                                 "true", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                                cwd=REPO_ROOT, env={**os.environ, "IRIS_HOME": str(home)}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            assert time.time() < deadline, "the app did not come up"
            time.sleep(0.5)
        yield url, log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_scores_and_results_follow_a_running_job_without_a_click(iris_home):
    from playwright.sync_api import sync_playwright

    save_plan(EvalPlan(name="live", models=["m-small", "m-big"]))
    folder = plan_dir("live")
    worker = subprocess.Popen(["sleep", "300"])  # stands for the job's process: its pid keeps the job 'running'
    try:
        jobs.update_status(folder, state="running", pid=worker.pid, step=0, total=10, message="starting")
        with streamlit_app(iris_home) as (url, log_path), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/evaluate")
            page.get_by_role("tab", name="Score (blind)").click()
            page.get_by_text("You scored 0 of 0 answers").wait_for()
            # The job writes its answers and ends; the page must show them by itself (no click, no reload).
            fake_answers(folder)
            jobs.update_status(folder, state="completed", step=10, total=10, message="10 answers")
            page.get_by_text("You scored 0 of 10 answers").wait_for(timeout=15_000)
            page.get_by_text(re.compile(r"answer by m-(small|big)/A to q1-operator")).wait_for(timeout=5_000)
            # Every tab drawn with data (a score, results, charts, CSV): still no deprecation in the app log.
            scoring.save_score(folder, read_answers(folder)[0]["answer_id"], {c: 4 for c in scoring.CRITERIA})
            page.get_by_role("tab", name="Results").click()
            page.get_by_text("Download answers + scores (CSV)").wait_for()
            browser.close()
        log = log_path.read_text()
        assert "use_container_width" not in log and "deprecat" not in log.lower(), log[-3000:]
    finally:
        worker.kill()
        worker.wait()
