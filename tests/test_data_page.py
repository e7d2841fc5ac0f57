"""The Data page driven with AppTest: load the sample → browse → filter (toggle a step) → save a version."""
from streamlit.testing.v1 import AppTest

from core import versions


def test_load_filter_save(iris_home):
    at = AppTest.from_file("../pages/data.py", default_timeout=300).run()
    assert not at.exception
    assert any("Load the bundled sample" in i.value for i in at.info)
    at.button[0].click().run()                      # Load (bundled sample is the default source)
    assert not at.exception, at.exception
    assert any(c.value.startswith("3,077 rows from bundled:finetome_sample.jsonl") for c in at.caption)
    at.text_input[0].set_value("fractions").run()   # full-text search
    assert any("rows match" in n.label for n in at.number_input)
    assert at.chat_message                          # the conversation viewer shows turns as bubbles
    funnel = at.dataframe[1].value
    assert funnel["step"].tolist()[:3] == ["empty_turns", "role_order", "length"]
    kept_with_score = funnel["after"].tolist()[-1]
    at.toggle(key="on_score").set_value(False).run()  # turning a step off updates the preview
    assert not at.exception
    assert "score" not in at.dataframe[1].value["step"].tolist()
    assert at.dataframe[1].value["after"].tolist()[-1] > kept_with_score
    at.text_input(key="save_name").set_value("sample-clean")
    at.number_input(key="save_fraction").set_value(0.1)
    next(b for b in at.button if b.label.startswith("Save")).click().run()
    assert not at.exception
    assert any("Saved version sample-clean" in s.value for s in at.success)
    m = versions.load_manifest("sample-clean")
    assert m["parent"]["source"] == "bundled:finetome_sample.jsonl" and m["kind"] == "filter"  # as the CLI writes it
    assert "score" not in [s["step"] for s in m["steps"]]
    assert m["rows"]["train"] + m["rows"]["eval"] == at.dataframe[1].value["after"].tolist()[-1]
    # saving again under the same name is refused with a message, not a traceback
    next(b for b in at.button if b.label.startswith("Save")).click().run()
    assert any("already exists" in e.value for e in at.error)


def test_upload_limit_and_atomic_store(iris_home, monkeypatch):
    import pytest

    from core.data import view as data_view
    from core.errors import IrisError
    from core.paths import uploads_dir

    monkeypatch.setenv("IRIS_MAX_UPLOAD_MB", "0.0001")  # ≈ 100 bytes
    with pytest.raises(IrisError, match="over the 0 MB upload limit"):  # the page shows it with st.error
        data_view.save_upload("big.jsonl", b"x" * 1000)
    assert list(uploads_dir().iterdir()) == []
    monkeypatch.setenv("IRIS_MAX_UPLOAD_MB", "1")
    assert data_view.save_upload("my data.jsonl", b"{}\n").read_bytes() == b"{}\n"
