"""The app's chrome and daily-use details in Debian's Chromium: every page opens by its URL with Iris's
navigation (even as the server's very first request), no Deploy button, and the Train runs table follows
status.json live. (Enter in the Data page's eval fraction not saving is checked in test_e2e_browser.py, which
loads the data anyway.) One server for the module, started without `make app`'s set-up."""
from __future__ import annotations

import json
import os
import re

import pytest

from tests.e2e_harness import CHROMIUM, CHROMIUM_ARGS, running_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PAGES = {"": "Iris", "data": "Data", "augment": "Augment", "train": "Train", "export": "Export", "chat": "Chat",
         "evaluate": "Evaluate"}
NAV = ["Home", "Data", "Augment", "Train", "Export", "Chat", "Evaluate"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    home = tmp_path_factory.mktemp("ui_browser") / "iris_home"
    with running_app(home, set_up=False) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield url, home, browser
        browser.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(url)
    return page


def test_every_page_opens_by_url_with_the_normal_navigation(app):
    url, _, browser = app
    for path, title in list(PAGES.items())[1:] + [("", "Iris")]:  # /data first: the server's first request
        page = _open(browser, f"{url}/{path}")
        page.get_by_role("heading", name=title).first.wait_for()
        nav = page.get_by_test_id("stSidebarNav")
        links = [t.strip().splitlines()[-1] for t in nav.get_by_role("link").all_inner_texts()]  # icon, then title
        assert links == NAV, (path, links)  # not the pages/ file names ("streamlit app", "augment", …)
        assert page.get_by_role("button", name="Deploy").count() == 0  # no Deploy button in the toolbar
        page.close()


def test_runs_table_follows_status_live(app):
    from playwright.sync_api import expect

    url, home, browser = app
    run = home / "runs" / "live-run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("base_model: smollm2-135m-instruct\ndataset: toy\n")
    status = {"state": "running", "step": 3, "total": 10, "pid": os.getpid()}
    (run / "status.json").write_text(json.dumps(status))
    page = _open(browser, f"{url}/train?run=live-run")
    page.get_by_role("tab", name="Runs").click()
    page.get_by_text(re.compile(r"running: 3/10 steps")).first.wait_for()
    # the grid draws on a canvas; its accessible copy (a hidden table inside it) holds the cell text
    state_cell = page.get_by_test_id("stDataFrame").last.locator("td[aria-colindex='2']").first
    expect(state_cell).to_have_text("running", timeout=60_000)
    (run / "status.json").write_text(json.dumps({**status, "state": "completed", "step": 10}))
    page.get_by_text(re.compile(r"completed: 10/10 steps")).first.wait_for(timeout=15_000)
    expect(state_cell).to_have_text("completed", timeout=15_000)  # no click, no reload: live like the bar
    page.close()

