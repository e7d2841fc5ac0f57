"""The whole path in a real browser, as a new user would: load the bundled sample → default filter →
save a version → CPU-quick LoRA run for a few steps → export GGUF → chat with the export and the base
side by side. The app is started by README command 1 (`make app`) on a free port with a fresh IRIS_HOME;
Debian's Chromium is driven by Playwright. Screenshots of each step land in test-artifacts/e2e/."""
from __future__ import annotations

import re
import time

import pytest

from tests.docs_shots import doc_shot, evaluate_and_shoot
from tests.e2e_harness import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, model_shown, pick_option, running_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


def shot(page, name: str) -> None:
    out = ARTIFACTS / "e2e"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the Streamlit selectbox labelled `label`."""
    pick_option(page, label, re.compile(re.escape(option)))


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True).first  # not its help icon ("Help for <label>")
    box.fill(str(value))
    box.press("Enter")


def goto(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)


def test_clone_filter_train_export_chat(home_with_model):
    from playwright.sync_api import sync_playwright

    # A fresh workspace with the session's materialised embedded model linked in (as `make app` would have left
    # it): its ~1 min dequantisation is tested once per session (test_foundation), not again here.
    home = home_with_model
    t_start = time.time()
    timings = {}
    with running_app(home) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(300_000)
        try:
            _walk(page, url, t_start, timings)
            evaluate_and_shoot(page, home, goto)  # IRIS_SCREENSHOTS=docs only: README screenshots
        except Exception:
            shot(page, "failure")
            raise
        finally:
            browser.close()
    print("e2e timings (s from `make app`):", {k: round(v, 1) for k, v in timings.items()})


def _walk(page, url: str, t_start: float, timings: dict) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_text("Nothing yet").wait_for()
    shot(page, "1-home")

    # Data: the bundled sample, the default recipe, a saved version.
    goto(page, "Data")
    page.get_by_role("button", name="Load").click()
    page.get_by_text(re.compile(r"rows from bundled:finetome_sample")).wait_for(timeout=600_000)
    page.get_by_role("tab", name="Filter").click()
    save = page.get_by_role("button", name=re.compile(r"Save [\d,]+ rows as a version"))
    save.wait_for(timeout=600_000)
    page.get_by_label("New version name").fill("sample-filtered")
    page.get_by_label("Eval split fraction").fill("0.05")
    page.get_by_label("Eval split fraction").press("Enter")  # applies the value; only the button saves
    page.wait_for_timeout(3000)
    assert page.get_by_text(re.compile("Saved version sample-filtered")).count() == 0
    save.click()
    page.get_by_text(re.compile("Saved version sample-filtered")).wait_for(timeout=300_000)
    shot(page, "2-data-filtered")
    doc_shot(page, "data-filter")

    # Train: the CPU-quick preset, two steps (the fewest with a loss curve; test_train pins the training itself).
    goto(page, "Train")
    choose(page, "Dataset version", "sample-filtered")
    set_number(page, "Max steps (0: use epochs)", 2)
    set_number(page, "Save a checkpoint every N steps", 2)
    set_number(page, "Eval loss every N steps (0: off)", 0)  # a few steps: the eval pass would dominate
    page.get_by_role("button", name="Launch").click()
    page.get_by_text(re.compile("Launched")).wait_for()
    page.get_by_role("tab", name="Runs").click()
    page.get_by_text(re.compile(r"completed: 2/2 steps")).first.wait_for(timeout=900_000)
    timings["trained"] = time.time() - t_start
    shot(page, "3-train-completed")
    doc_shot(page, "train-curves", page.locator(".stPlotlyChart").first)

    # Export: the run's final adapter at the page's default quant (q4_k_m), verified against the merged model.
    goto(page, "Export")
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text(re.compile(r"completed: \d+/\d+ steps")).first.wait_for(timeout=900_000)
    timings["exported"] = time.time() - t_start
    shot(page, "4-export-completed")
    doc_shot(page, "export-report")

    # Chat: the export and the base, side by side.
    goto(page, "Chat")
    page.get_by_role("tab", name="Compare").click()
    page.get_by_label("Prompt", exact=True).fill("What is a Boolean operator? Answer in one sentence.")
    page.get_by_role("button", name="Send to grid").click()
    page.get_by_text("Saved comparison").wait_for(timeout=600_000)
    timings["first_answer"] = time.time() - t_start
    shot(page, "5-chat-compare")
    doc_shot(page, "chat-compare")
    answers = page.get_by_text(re.compile(r"tok/s"))
    expect(answers.first).to_be_visible()

    # Chat: a message with arithmetic to the default model (the newest export), then the chat reopened after
    # a reload: the Model selector follows the transcript and `2*17` reads back as written (no italics).
    page.get_by_role("tab", name="Chat").click()
    sidebar = page.get_by_test_id("stSidebar")
    model_shown(page, "q4_k_m.gguf")
    box = page.get_by_placeholder("Ask something")
    box.fill("Is 84 = 2*17 + 3 * 5 + 35? Answer yes or no.")
    box.press("Enter")
    expect(page.get_by_test_id("stChatMessage").nth(1)).to_contain_text("tok/s", timeout=600_000)
    page.reload()
    page.get_by_role("heading", name="Chat").first.wait_for(timeout=120_000)
    pick_option(sidebar, "Saved", re.compile(r"chat · Is 84"))
    sidebar.get_by_test_id("stButton").filter(has_text=re.compile(r"^Open$")).click()
    model_shown(page, "q4_k_m.gguf")
    question = page.get_by_test_id("stChatMessage").first
    expect(question).to_contain_text("Is 84 = 2*17 + 3 * 5 + 35?")
    assert question.locator("em, strong").count() == 0
    shot(page, "6-chat-reopened")
