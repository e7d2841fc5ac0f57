"""The Chat page in Debian's Chromium (Playwright), as users meet it: a reopened transcript brings back its
model and shows answers exactly as written (`2*17`, `**kwargs`, a table, an HTML tag); Stop mid-answer and
the next message is answered; two browser sessions on one model: the second is told it is queued and both
get their answers; a reload mid-answer keeps the question and the answer so far in the Saved list. The app is started with README command 1 (`make app`) on a free port."""
from __future__ import annotations

import re
import shutil
import time

import pytest

from tests.e2e_harness import CHROMIUM, CHROMIUM_ARGS, model_shown, pick_option, running_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

TRICKY = ("Work: 84 = 2*17 + 3 * 5, then 36 = 2*5 + 6\n\n```python\ndef f(**kwargs):\n    return kwargs\n```\n\n"
          "| op | value |\n|---|---|\n| 2*17 | 34 |\n\nUse <b>bold</b> and _stray_ # signs")
EMBEDDED_LABEL = "SmolLM2-135M-Instruct Q4_1 (embedded)"


def _plant(home) -> None:
    """An export (a copy of the embedded GGUF, so it is the newest export and the default model) and a
    transcript whose last answer came from the embedded model."""
    from core.chat import transcripts
    from core.inference import DecodingSettings
    from core.models import embedded_gguf_path
    from core.paths import exports_dir, write_json

    folder = exports_dir() / "fine"
    folder.mkdir(parents=True)
    shutil.copy(embedded_gguf_path(), folder / "fine-q4_1.gguf")
    write_json(folder / "export.json", {"name": "fine", "mode": "merged", "files": ["fine-q4_1.gguf"],
                                        "source": {"run": "run-x", "dataset": "d-v1", "base_model": "smollm2"}})
    s = DecodingSettings(temperature=0.2, top_p=0.7, max_new_tokens=512)
    stats = {"finish_reason": "stop", "completion_tokens": 40}
    messages = [{"role": "user", "content": "Show your working"},
                transcripts.answer_message(TRICKY, stats, "", "export:fine/fine-q4_1.gguf", s, "A"),
                {"role": "user", "content": "Again"},
                transcripts.answer_message(TRICKY, stats, "", "smollm2-135m-instruct", s, "A")]
    transcripts.save_chat("smollm2-135m-instruct", "Be brief.", s, messages)


def _send(page, text: str) -> None:
    box = page.get_by_placeholder("Ask something")
    box.fill(text)
    box.press("Enter")


def _button(page, label: str):
    """A Streamlit button by its exact text (the toolbar's own "Stop" and dropdown "Open" icons excluded)."""
    return page.get_by_test_id("stButton").filter(has_text=re.compile(f"^{label}$")).first


def _open_chat(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("link", name="Chat").first.click()
    page.get_by_role("heading", name="Chat").first.wait_for(timeout=120_000)


def test_chat_in_chromium_reopen_markdown_stop_and_two_sessions(home_with_model):
    from playwright.sync_api import expect, sync_playwright

    home = home_with_model  # the session's materialised model linked in: `make app` has nothing to materialise
    _plant(home)
    with running_app(home) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        a = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        a.set_default_timeout(180_000)
        _open_chat(a, url)
        sidebar = a.get_by_test_id("stSidebar")
        model_shown(a, "fine · fine-q4_1.gguf")  # the newest export is the default model

        # reopen: the Model selector follows the last answer, the text reads back exactly as written
        pick_option(sidebar, "Saved", re.compile("Show your working"))
        sidebar.get_by_test_id("stButton").filter(has_text=re.compile(r"^Open$")).click()
        expect(sidebar.get_by_text(re.compile("Reopened a chat"))).to_be_visible()
        model_shown(a, EMBEDDED_LABEL)
        answer = a.get_by_test_id("stChatMessage").nth(1)
        expect(answer).to_contain_text("84 = 2*17 + 3 * 5, then 36 = 2*5 + 6")
        expect(answer).to_contain_text("Use <b>bold</b> and _stray_ # signs")
        expect(answer.locator("code")).to_contain_text("def f(**kwargs):")
        assert answer.locator("em, strong, b, h1, h2").count() == 0
        assert answer.locator("table").count() == 1
        expect(a.get_by_test_id("stChatMessage").nth(3)).to_contain_text(f"Model: {EMBEDDED_LABEL}")

        # Stop ~1 s into a long answer, then the next message is answered by the same model
        _button(a, "New chat").click()
        expect(a.get_by_test_id("stChatMessage")).to_have_count(0)
        _send(a, "Write a very long story about a dragon who learns to count.")
        _button(a, "Stop").wait_for()
        time.sleep(1.0)
        _button(a, "Stop").click()
        expect(a.get_by_text("⚠ stopped")).to_be_visible(timeout=60_000)
        pick_option(sidebar, "Saved", re.compile("a dragon who learns"))  # listed at once, not a run later
        t0 = time.time()
        _send(a, "What is the capital of France? Answer in one word.")
        expect(a.get_by_test_id("stChatMessage").nth(3)).to_contain_text("Paris", timeout=120_000)
        assert time.time() - t0 < 120

        # two sessions at once: the second sees it is queued, then both answers arrive
        b = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        b.set_default_timeout(180_000)
        _open_chat(b, url)
        pick_option(b.get_by_test_id("stSidebar"), "Model", EMBEDDED_LABEL)  # the model session a uses
        _button(a, "New chat").click()
        expect(a.get_by_test_id("stChatMessage")).to_have_count(0)
        _send(a, "Write a very long story about a dragon who learns to count.")
        _button(a, "Stop").wait_for()
        _send(b, "What is the capital of France? Answer in one word.")
        expect(b.get_by_text(re.compile(r"Queued: 1 answer\(s\) ahead"))).to_be_visible(timeout=60_000)
        expect(a.get_by_test_id("stChatMessage").nth(1)).to_contain_text("tok/s", timeout=300_000)
        expect(b.get_by_test_id("stChatMessage").nth(1)).to_contain_text("Paris", timeout=300_000)
        expect(b.get_by_test_id("stChatMessage").nth(1)).to_contain_text("tok/s")

        # a reload mid-answer ends that session: its question and what had arrived are saved, marked stopped
        _button(a, "New chat").click()
        expect(a.get_by_test_id("stChatMessage")).to_have_count(0)
        _send(a, "Write a long poem about the sea.")
        _button(a, "Stop").wait_for()
        time.sleep(1.0)
        a.reload()
        a.get_by_role("heading", name="Chat").first.wait_for(timeout=120_000)
        deadline = time.time() + 60  # the old session saves at its next token; the new page may render first
        while time.time() < deadline and not any("a long poem" in f.read_text() for f in home.glob("transcripts/*.json")):
            time.sleep(0.5)
        _button(a, "New chat").click()  # a run after that save lists it
        pick_option(sidebar, "Saved", re.compile("a long poem about the sea"))
        sidebar.get_by_test_id("stButton").filter(has_text=re.compile(r"^Open$")).click()
        expect(a.get_by_test_id("stChatMessage").first).to_contain_text("Write a long poem about the sea.")
        expect(a.get_by_test_id("stChatMessage").nth(1)).to_contain_text("⚠ stopped")
        browser.close()


def test_serve_panel_messages_outlive_its_redraw(iris_home):
    """The Serve panel redraws every 3 s; a refused Start (0.0.0.0 without a key) drew its sentence once, and in
    Chromium the user never saw it. It now stays until the next Start."""
    from playwright.sync_api import expect, sync_playwright

    with running_app(iris_home, set_up=False) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.set_default_timeout(180_000)
        _open_chat(page, url)
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_text("Serve (OpenAI API)").click()
        pick_option(sidebar, "Listen on", "0.0.0.0")
        _button(sidebar, "Start server").click()
        refused = sidebar.get_by_text(re.compile("serving on 0.0.0.0 lets other machines use your models"))
        expect(refused).to_be_visible(timeout=20_000)
        time.sleep(7)  # s: two of the panel's 3 s redraws
        expect(refused).to_be_visible(timeout=1_000)
        browser.close()
