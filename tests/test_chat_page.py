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


def test_compare_grid_blind_vote(home_with_model, caplog):
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
    assert not [c.value for c in at.caption if "reused" in c.value]  # cache reuse would tell the cells apart
    at.radio(key="vote").set_value(1)
    [vote] = [b for b in at.button if b.label == "Record vote"]
    vote.click().run()
    assert not at.exception
    blind = json.loads(path.read_text())["blind"]
    assert blind["choice"] == 1 and blind["preferred_cell"] == blind["order"][1]
    [reveal] = [s.value for s in at.success if "You preferred answer 2" in s.value]
    cell = json.loads(path.read_text())["cells"][blind["preferred_cell"]]
    assert reveal.endswith(f"{cell['model']['label']} · {cell['setting']}")
    assert "smollm2-135m-instruct ·" not in reveal  # labels, never internal ids
    assert any("reused" in c.value for c in at.caption)  # after the vote the counts are shown
    assert "use_container_width" not in caplog.text and not at.warning


def test_compare_custom_column_uses_the_custom_sliders_whatever_the_chat_preset():
    """Compare's "custom" column is what the Custom settings sliders say, also while the chat itself uses A (it
    used to be preset A's values, so "A" and "custom" wrote the same answer)."""
    at = _page()
    assert at.sidebar.radio(key="preset").value == "A"
    next(n for n in at.sidebar.number_input if n.label == "max new tokens").set_value(3)
    next(s for s in at.sidebar.slider if s.label == "temperature").set_value(1.3).run()
    at.multiselect(key="cmp_models").set_value(["smollm2-135m-instruct"])
    at.multiselect(key="cmp_settings").set_value(["A", "custom"])
    at.text_area(key="cmp_prompt").set_value(QUESTION)
    next(b for b in at.button if b.label == "Send to grid").click().run()
    assert not at.exception and not at.error
    [path] = list(transcripts_dir().glob("*compare*.json"))
    cells = {c["setting"]: c for c in json.loads(path.read_text())["cells"]}
    assert (cells["custom"]["settings"]["max_new_tokens"], cells["custom"]["settings"]["temperature"]) == (3, 1.3)
    assert cells["custom"]["stats"]["completion_tokens"] <= 3
    assert cells["A"]["settings"]["temperature"] == 0.2


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


def _fake_export(name: str = "fine") -> str:
    """An export as core.export leaves it, holding a copy of the embedded GGUF: a second real chat model."""
    import shutil

    from core.models import embedded_gguf_path
    from core.paths import write_json

    folder = exports_dir() / name
    folder.mkdir(parents=True)
    shutil.copy(embedded_gguf_path(), folder / f"{name}-q4_1.gguf")
    write_json(folder / "export.json", {"name": name, "mode": "merged", "files": [f"{name}-q4_1.gguf"],
                                        "source": {"run": "run-x", "dataset": "d-v1", "base_model": "smollm2"}})
    return f"export:{name}/{name}-q4_1.gguf"


def _send(at: AppTest, text: str) -> dict:
    at.chat_input[0].set_value(text).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at.session_state.messages[-1]


def test_answers_keep_their_model_reopen_follows_it_and_the_page_is_finished_after_each_answer():
    export_id = _fake_export()
    at = _page()
    assert at.sidebar.selectbox(key="model").value == export_id  # the newest export is the default
    first = _send(at, QUESTION)
    # after a streamed answer the page is drawn as after a reload: no Stop button, models listed now
    assert "Stop" not in [b.label for b in at.button]
    assert any("fine · fine-q4_1.gguf" in c.value for c in at.sidebar.caption)
    assert first["model"]["id"] == export_id and first["settings"]["max_new_tokens"] == 512
    at.sidebar.selectbox(key="model").set_value("smollm2-135m-instruct").run()
    second = _send(at, "And of Italy? One word.")
    assert second["model"]["id"] == "smollm2-135m-instruct"
    captions = [c.value for c in at.caption]
    assert "Model: fine · fine-q4_1.gguf" in captions and "Model: SmolLM2-135M-Instruct Q4_1 (embedded)" in captions
    [path] = list(transcripts_dir().glob("*.json"))
    saved = json.loads(path.read_text())
    assert [m["model"]["id"] for m in saved["messages"] if m["role"] == "assistant"] == [export_id,
                                                                                         "smollm2-135m-instruct"]
    assert saved["messages"][1]["model"]["lineage"]["export"] == "fine"
    # reopened in a fresh session, the Model selector follows the last answer's model (not the default)
    at2 = _page()
    at2.sidebar.selectbox(key="pick").set_value(saved["id"]).run()
    [open_button] = [b for b in at2.sidebar.button if b.label == "Open"]
    open_button.click().run()
    assert not at2.exception and at2.sidebar.selectbox(key="model").value == "smollm2-135m-instruct"
    assert [m["content"] for m in at2.session_state.messages] == [m["content"] for m in saved["messages"]]
    _send(at2, "And of Spain? One word.")
    again = json.loads(path.read_text())
    assert [m["model"]["id"] for m in again["messages"] if m["role"] == "assistant"] == [
        export_id, "smollm2-135m-instruct", "smollm2-135m-instruct"]  # earlier turns never rewritten


def test_a_cut_answer_says_so_and_continues_and_a_refused_message_stays_in_the_box():
    at = _page()
    at.sidebar.radio(key="preset").set_value("custom").run()
    at.sidebar.number_input[1].set_value(5).run()  # max new tokens (after top_k)
    cut = _send(at, "Explain photosynthesis in detail.")
    assert cut["stats"]["finish_reason"] == "length" and "max new tokens" in cut["note"]
    [cont] = [b for b in at.button if b.label == "Continue"]
    cont.click().run()
    assert not at.exception and [m["content"] for m in at.session_state.messages][-2] == "Continue."
    too_long = "word " * 6000  # longer than the 4096-token context
    at.chat_input[0].set_value(too_long).run()
    assert not at.exception and len(at.error) == 1 and "context" in at.error[0].value
    box = at.chat_input[0].proto  # the text is put back into the chat box (not submitted again)
    assert box.set_value and box.value == too_long and len(at.session_state.messages) == 4
