"""README screenshots from the end-to-end browser test: `IRIS_SCREENSHOTS=docs` (with `-m slow`) writes
docs/<name>.png as the walk passes each page; without it only test-artifacts/e2e/ gets screenshots.

    IRIS_SCREENSHOTS=docs .venv/bin/python -m pytest -m slow tests/test_e2e_browser.py

With the flag the walk also runs a short evaluation (core.evaluate on the base model and the trained
adapter, 5 questions × 8 tokens, blind scores saved) so the Evaluate page has a chart to show.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"


def wanted() -> bool:
    return os.environ.get("IRIS_SCREENSHOTS") == "docs"


def doc_shot(page, name: str, element=None) -> None:
    """docs/<name>.png: the element alone when given (a chart), else the whole page."""
    if not wanted():
        return
    DOCS.mkdir(exist_ok=True)
    if element is not None:
        element.scroll_into_view_if_needed()
        element.screenshot(path=str(DOCS / f"{name}.png"))
    else:
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)


def evaluate_and_shoot(page, home: Path, goto) -> None:
    """A tiny scored evaluation of the base model and the walk's run, then the Evaluate page's chart."""
    if not wanted():
        return
    os.environ["IRIS_HOME"] = str(home)  # this test process talks to the app's workspace
    from core import jobs, runs
    from core.evaluate import questions, scoring
    from core.evaluate.answers import read_answers
    from core.evaluate.plan import EvalPlan, save_plan

    run = runs.list_runs()[0]["run"]
    path = save_plan(EvalPlan(name="first-look", models=["smollm2-135m-instruct", f"run:{run}"], max_new_tokens=8))
    jobs.launch(path.parent, jobs.python_module_argv("core.evaluate", str(path)))
    assert jobs.wait(path.parent, timeout_s=900)["state"] == "completed", jobs.tail(path.parent / jobs.LOG)
    answers = read_answers(path.parent)
    for q in questions.load_set("boolean_logic").questions:  # scores a person would give on the Score tab
        for ans in scoring.blind_queue(answers, q.id, session_seed=1):
            points = 4 if ans["model"].startswith("run:") else 3
            scoring.save_score(path.parent, ans["answer_id"], {c: points for c in scoring.CRITERIA})
    goto(page, "Evaluate")
    page.get_by_role("tab", name="Results").click()
    chart = page.locator(".stPlotlyChart").first
    chart.wait_for(timeout=120_000)
    page.wait_for_timeout(1500)
    doc_shot(page, "evaluate-chart", chart)
