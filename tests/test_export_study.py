"""The quant study (#25): the page launches it on a tiny Llama-3 run, one job makes one merge and
one f16 conversion, each quant is verified and measured here, and the page shows the table, chart and advice."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.paths import exports_dir, read_json, runs_dir
from tests.export_helpers import make_run

pytestmark = pytest.mark.slow
PAGE = "../pages/export.py"


@pytest.fixture(scope="module")
def llama3_256(tmp_path_factory):
    """Tiny Llama with the real Llama-3 vocab and rows of 256 (K-quants need multiples of 256)."""
    from tests.helpers import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("study_llama3_256") / "model", hidden=256, intermediate=512)


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


def test_study_from_the_page_one_merge_one_conversion_measured_quants(llama3_256):
    from core.export.study import recommend

    make_run(runs_dir(), "st", str(llama3_256), llama3_256, checkpoints=(), final=True,
             dataset=_dataset_with_eval_split("study-v1"))
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
    assert all(r["perplexity"] > 1 for r in rows.values())  # ordering is pinned on a real model below
    assert rows["f16"]["size_bytes"] > rows["q8_0"]["size_bytes"] > rows["q4_k_m"]["size_bytes"]
    # each quant's RAM is its own process's: the f16 holds about its larger file more than the q4_k_m (the peak
    # carried over exec from the job that spawned them once made every quant show the job's own peak)
    gap = rows["f16"]["size_bytes"] - rows["q4_k_m"]["size_bytes"]
    assert rows["f16"]["peak_rss_bytes"] - rows["q4_k_m"]["peak_rss_bytes"] > gap / 2
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


def test_heldout_perplexity_orders_f16_q8_0_q4_k_m_on_smollm2(home_with_model, tmp_path):
    """On the trained SmolLM2 (no LoRA: a model where it must), coarser rounding costs held-out likelihood:
    f16 ≤ q8_0 ≤ q4_k_m, with 1% tolerance for near-equal pairs. The study's own functions, one conversion."""
    from core.export.convert import convert_hf, quantize
    from core.export.study import gguf_perplexity, heldout_ids
    from core.models import EMBEDDED_ID, resolve

    model = resolve(EMBEDDED_ID)
    rows, why = heldout_ids(model, _dataset_with_eval_split("ppl-v1"))
    assert len(rows) == 8 and not why
    f16 = convert_hf(model, tmp_path / "smol-f16.gguf")
    ggufs = {"f16": f16, **{q: quantize(f16, tmp_path / f"smol-{q}.gguf", q, 2) for q in ("q8_0", "q4_k_m")}}
    ppl = {q: gguf_perplexity(path, rows, 1)["perplexity"] for q, path in ggufs.items()}
    assert 1 < ppl["f16"] <= ppl["q8_0"] * 1.01 and ppl["q8_0"] <= ppl["q4_k_m"] * 1.01, ppl
    assert ppl["q4_k_m"] > ppl["f16"], ppl  # 4-bit rounding is not free
