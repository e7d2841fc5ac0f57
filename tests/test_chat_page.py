"""The Chat page driven with AppTest: a real generation with the embedded model, compare grid + blind vote,
transcripts reopened, and bad inputs shown as one message while the page keeps working."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from core.paths import exports_dir, transcripts_dir

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France? Answer in one word."
PAGE = "../pages/chat.py"


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    assert not at.exception
    return at


def test_chat_streams_a_real_answer_with_stats_and_saves_it():
    at = _page()
    assert at.sidebar.selectbox(key="model").value == "smollm2-135m-instruct"
    assert "FineTome teaching assistant" in at.sidebar.text_area(key="system").value
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception and not at.error
    answer = at.session_state.messages[-1]
    assert answer["role"] == "assistant" and "Paris" in answer["content"]
    assert any("tok/s" in c.value and "TTFT" in c.value for c in at.caption)
    at.chat_input[0].set_value("And of Italy?").run()  # follow-up: the first turn's KV cache is reused
    assert not at.exception
    assert at.session_state.messages[-1]["stats"]["cached_tokens"] > answer["stats"]["prompt_tokens"]
    [path] = list(transcripts_dir().glob("*.json"))
    t = json.loads(path.read_text())
    assert t["kind"] == "chat" and len(t["messages"]) == 4 and t["model"]["lineage"]["quant"] == "Q4_1"
    # reopen it in a fresh session
    at2 = _page()
    at2.sidebar.selectbox(key="pick").set_value(t["id"]).run()
    at2.sidebar.button[1].click().run()  # "Open" (after "New chat")
    assert not at2.exception and [m["content"] for m in at2.session_state.messages] == \
        [m["content"] for m in t["messages"]]


def test_compare_grid_blind_vote(home_with_model):
    at = _page()
    assert at.multiselect(key="cmp_models").value == ["smollm2-135m-instruct", "model:smollm2-135m-instruct"]
    at.toggle(key="cmp_blind").set_value(True).run()
    at.text_area(key="cmp_prompt").set_value(QUESTION)
    [send] = [b for b in at.button if b.label == "Send to grid"]
    send.click().run()
    assert not at.exception and not at.error
    [path] = list(transcripts_dir().glob("*compare*.json"))
    t = json.loads(path.read_text())
    assert [(c["model"]["id"], c["setting"]) for c in t["cells"]] == [
        ("smollm2-135m-instruct", "A"), ("smollm2-135m-instruct", "B"),
        ("model:smollm2-135m-instruct", "A"), ("model:smollm2-135m-instruct", "B")]
    shown = [m.value for m in at.markdown if m.value.startswith("**Answer")]
    assert sorted(shown) == ["**Answer 1**", "**Answer 2**", "**Answer 3**", "**Answer 4**"]  # labels hidden
    at.radio(key="vote").set_value(1)
    [vote] = [b for b in at.button if b.label == "Record vote"]
    vote.click().run()
    assert not at.exception
    blind = json.loads(path.read_text())["blind"]
    assert blind["choice"] == 1 and blind["preferred_cell"] == blind["order"][1]
    assert any("You preferred answer 2" in s.value for s in at.success)


def test_bad_inputs_show_one_message_and_the_page_keeps_working():
    bad = exports_dir() / "broken"
    bad.mkdir(parents=True)
    (bad / "broken-q4_k_m.gguf").write_bytes(b"not a model at all")
    at = _page()
    at.sidebar.selectbox(key="model").set_value("export:broken/broken-q4_k_m.gguf").run()
    at.chat_input[0].set_value("Hello").run()
    assert not at.exception and len(at.error) == 1 and "not a GGUF model" in at.error[0].value
    assert at.session_state.messages == []  # nothing half-recorded
    [send] = [b for b in at.button if b.label == "Send to grid"]
    send.click().run()  # empty compare prompt
    assert not at.exception and any("empty prompt" in e.value for e in at.error)
    at.sidebar.selectbox(key="model").set_value("smollm2-135m-instruct").run()
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception and not at.error and "Paris" in at.session_state.messages[-1]["content"]
