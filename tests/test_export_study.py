"""The quant study (#25), end to end on the embedded SmolLM2: the page launches it, one job makes one merge and
one f16 conversion, each quant is verified and measured here, and the page shows the table, chart and advice."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.paths import exports_dir, read_json, runs_dir
from tests.export_helpers import make_run

pytestmark = pytest.mark.slow
PAGE = "../pages/export.py"


def _dataset_with_eval_split(name: str) -> str:
    """A version of the bundled sample whose eval split holds 8 well-formed conversations."""
    from core import versions
    from core.data.formats import load_source

    df = load_source("sample")
    ok = df["messages"].map(lambda ms: len(ms) >= 2 and all(str(m.get("content") or "").strip() for m in ms)
                            and {m["role"] for m in ms} <= {"user", "assistant"})
    df = df[ok].reset_index(drop=True)
    versions.save(name, df.iloc[8:40], eval_df=df.iloc[:8], parent={"source": "bundled:finetome_sample"})
    return name


def test_study_from_the_page_one_merge_one_conversion_measured_quants(home_with_model):
    from core.export.study import recommend
    from core.models import EMBEDDED_ID, resolve

    # a small LoRA keeps the model the trained SmolLM2, where coarser rounding must cost likelihood
    make_run(runs_dir(), "st", EMBEDDED_ID, resolve(EMBEDDED_ID), checkpoints=(), final=True,
             dataset=_dataset_with_eval_split("study-v1"), b_std=0.002)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.multiselect[0].set_value(["f16", "q8_0", "q4_k_m"]).run()
    next(c for c in at.checkbox if c.label == "Study quants").check().run()
    # one thread: llama.cpp's worker threads spin-wait, so on a shared 2-core machine two threads can crawl
    next(n for n in at.number_input if n.label == "Study threads").set_value(1).run()
    assert not at.error, [e.value for e in at.error]
    assert [s["step"] for s in at.dataframe[0].value.to_dict("records")][-1] == "study"  # the pre-flight counts it
    next(b for b in at.button if b.label == "Export").click().run()
    folder = exports_dir() / "st"
    status = jobs.wait(folder, timeout_s=1200)
    log = (folder / jobs.LOG).read_text()
    assert status["state"] == "completed", log[-3000:]

    # one merge, one conversion to f16, then every quant from that f16
    assert log.count("[export] merging") == 1 and log.count("Model successfully exported") == 1
    assert log.count("[export] quantizing to") == 2
    study = read_json(folder / "study.json")
    rows = {r["quant"]: r for r in study["rows"]}
    assert list(rows) == ["f16", "q8_0", "q4_k_m"] and study["threads"] == 1 and study["perplexity_rows"] == 8
    for r in rows.values():  # real measurements of real files
        assert (folder / r["file"]).stat().st_size == r["size_bytes"]
        assert r["gen_tok_s"] > 0 and r["prompt_tok_s"] > 0 and r["ttft_s"] > 0
        assert r["peak_rss_bytes"] > r["size_bytes"] and 0 < r["generated_tokens"] <= study["prompts"] * 31
        assert r["verdict"] in ("pass", "warn", "fail") and 0 < r["top1_agreement"] <= 1
    ppl = {q: r["perplexity"] for q, r in rows.items()}
    # a real 135M model: rounding harder can only cost likelihood (1% tolerance for noise in near-equal pairs)
    assert ppl["f16"] <= ppl["q8_0"] * 1.01 and ppl["q8_0"] <= ppl["q4_k_m"] * 1.01, ppl
    assert rows["f16"]["size_bytes"] > rows["q8_0"]["size_bytes"] > rows["q4_k_m"]["size_bytes"]
    assert study["recommendation"] == recommend(study) and study["recommendation"].split()[0] in rows
    assert (folder / "study.png").read_bytes()[:4] == b"\x89PNG" and b"plotly" in (folder / "study.html").read_bytes()

    at.run()
    expander = next(e for e in at.expander if e.label.startswith("st — completed"))
    assert list(expander.dataframe[1].value["quant"]) == ["f16", "q8_0", "q4_k_m"]
    assert any(s.value == study["recommendation"] for s in expander.success)
    assert len(expander.get("plotly_chart")) == 1

    # the Evaluate page adds the study's points to its results (a separate chart, same axes)
    ev = AppTest.from_file("../pages/evaluate.py", default_timeout=120).run()
    assert not ev.exception
    study_box = next(e for e in ev.expander if e.label.startswith("Quant studies"))
    assert study_box.selectbox[0].value == "st" and list(study_box.dataframe[0].value["quant"]) == list(rows)
