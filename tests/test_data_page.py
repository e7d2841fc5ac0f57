"""The Data page driven with AppTest: load the sample → browse → filter (toggle a step) → save a version."""
import json
import time

from streamlit.testing.v1 import AppTest

from core import hub, versions


def test_load_filter_save(iris_home):
    at = AppTest.from_file("../pages/data.py", default_timeout=300).run()
    assert not at.exception
    assert any("Load the bundled sample" in i.value for i in at.info)
    at.radio[0].set_value("Saved version").run()    # none saved yet: nothing to load (Load raised a traceback)
    assert any("No saved versions yet." in i.value for i in at.info)
    assert next(b for b in at.button if b.label == "Load").disabled
    at.radio[0].set_value("Bundled sample").run()
    at.button[0].click().run()                      # Load (bundled sample is the default source)
    assert not at.exception, at.exception
    assert any(c.value.startswith("3,077 rows from bundled:finetome_sample.jsonl") for c in at.caption)
    assert not at.get("help")  # Streamlit's magic showed a DeltaGenerator's help in the Versions tab
    at.text_input[0].set_value("fractions").run()   # full-text search
    assert any("rows match" in n.label for n in at.number_input)
    assert at.chat_message                          # the conversation viewer shows turns as bubbles
    funnel = at.dataframe[1].value
    assert funnel["step"].tolist()[:3] == ["Empty turns", "Role order", "Length in tokens"]  # labels, not code names
    kept_with_score = funnel["after"].tolist()[-1]
    at.toggle(key="on_score").set_value(False).run()  # turning a step off updates the preview
    assert not at.exception
    assert "Quality score" not in at.dataframe[1].value["step"].tolist()
    reason_cfg = json.loads(at.dataframe[2].proto.columns)["reason"]
    assert reason_cfg["width"] == "large"  # the dropped rows' reason column is wide enough to read it whole
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
    # the same name again is refused before saving: an error beside the name, and Save writes nothing. Save stays
    # enabled: a corrected name and the click arrive together, and a Save disabled by the old name lost that click
    at.run()
    assert any("already exists" in e.value for e in at.error)
    save = next(b for b in at.button if b.label.startswith("Save"))
    assert not save.disabled
    save.click().run()
    assert any("already exists" in e.value for e in at.error) and not at.success
    at.text_input(key="save_name").set_value("sample-clean-2").run()
    assert not at.error

    # a Load that fails (an empty .jsonl) says why beside the loader and keeps the dataset and the recipe edits
    empty = iris_home / "empty.jsonl"
    empty.write_text("")
    at.radio[0].set_value("Hub dataset").run()
    at.text_input(key="hub_id").set_value(str(empty)).run()
    next(b for b in at.button if b.label == "Load").click().run()
    assert not at.exception
    assert any("empty.jsonl is empty" in e.value for e in at.error)
    assert any(c.value.startswith("3,077 rows from bundled:finetome_sample") for c in at.caption)
    assert at.toggle(key="on_score").value is False

    # a hub id while the hub is unreachable answers at once with the sentence, not after ~25 s of retries
    if not hub.reachable():
        at.text_input(key="hub_id").set_value("mlabonne/FineTome-100k").run()
        t0 = time.perf_counter()
        next(b for b in at.button if b.label == "Load").click().run()
        assert time.perf_counter() - t0 <= 3.0
        assert any("not reachable from this machine" in e.value for e in at.error)
        assert any(c.value.startswith("3,077 rows from bundled:finetome_sample") for c in at.caption)


def test_statistics_label_every_source_and_use_readable_log_ticks():
    import pandas as pd

    from core.data import view as data_view

    sources = pd.Series([f"source-{i}" for i in range(12) for _ in range(100 - 7 * i)])
    fig = data_view.sources_figure(sources)
    assert list(fig.layout.yaxis.tickvals) == [f"source-{i}" for i in range(12)]  # every bar has its label
    assert fig.layout.height >= 22 * 12 and list(fig.data[0].text) == [100 - 7 * i for i in range(12)]
    many = data_view.sources_figure(pd.Series([f"s{i}" for i in range(40)]))
    assert len(many.layout.yaxis.tickvals) == 30 and many.layout.yaxis.tickvals[-1] == "other (11 sources)"
    m = pd.DataFrame({"tokens": [10, 200, 3000, 40], "n_turns": [2, 2, 4, 2], "lang": ["en"] * 4})
    tokens = data_view.stats_figures(pd.DataFrame({"messages": [[]] * 4}), m)["Tokens per conversation (chat template)"]
    assert tokens.layout.yaxis.type == "log" and tokens.layout.yaxis.dtick == 1  # 1, 10, 100 … only


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
