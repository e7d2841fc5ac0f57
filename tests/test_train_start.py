"""Launch → step 1 quickly: a run tokenises only the rows it reads, caches them, and the order stays the seed's."""
from __future__ import annotations

import os

import pytest

from core import jobs, runs
from core.train import lora
from tests.test_train import tiny_cfg, toy_version


def cached_rows() -> int:
    import pyarrow.parquet as pq

    from core.train.tokens import cache_root

    return sum(pq.read_metadata(p).num_rows for p in cache_root().rglob("part-*.parquet"))


def losses(run_dir) -> list[float]:
    return [m["loss"] for m in runs.read_metrics(run_dir) if "loss" in m]


@pytest.mark.slow
def test_runs_tokenise_only_what_they_read_then_use_the_cache_and_resume_in_place(tiny_llama3_dir):
    from safetensors.torch import load_file

    toy_version(rows=600, eval_rows=0)  # 150× what a 4-step run of 2 rows per step reads
    first = lora.main(tiny_cfg(tiny_llama3_dir, run_name="first", eval_steps=0))
    status = jobs.read_status(first)
    # 4 steps × batch 2 × accum 1 × 1 process = 8 rows, plus the block of 10 rows (datasets formats rows 10 at a
    # time when iterated) behind trl's peek at the first row: at most 18 of 600
    assert 8 <= status["rows_tokenised"] <= 18 and cached_rows() == status["rows_tokenised"], status
    assert status["state"] == "completed" and status.get("phase") is None

    second = lora.main(tiny_cfg(tiny_llama3_dir, run_name="second", eval_steps=0))
    assert jobs.read_status(second)["rows_tokenised"] == 0 and cached_rows() == status["rows_tokenised"]
    # same seed, rows from the cache instead of the tokenizer: the same batches, so the same losses and adapter
    assert losses(second) == losses(first) and len(losses(first)) == 4
    a = load_file(runs.adapter_dir(first) / "adapter_model.safetensors")
    b = load_file(runs.adapter_dir(second) / "adapter_model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)

    # resuming from checkpoint-2 continues at the same data position: steps 3 and 4 see the same rows again
    lora.resume_run(second, checkpoint=2)
    assert losses(second) == losses(first)
    assert jobs.read_status(second)["rows_tokenised"] == 0  # the skipped batches were not tokenised either


def test_streamed_rows_equal_fully_tokenised_rows_and_come_from_the_cache(tiny_llama3_dir):
    from transformers import AutoTokenizer

    from core.train.backends import set_training_template
    from core.train.tokens import RowSource

    toy_version(rows=30, eval_rows=0)
    tok = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    set_training_template(tok, True)
    seen = []
    fresh = RowSource("toy", "train", tok, 24, True)
    full = fresh.full_dataset(lambda n, total: seen.append((n, total)), every_s=0)
    assert fresh.cache.tokenised == 30 and seen[-1] == (30, 30) and len(seen) == 31
    again = RowSource("toy", "train", tok, 24, True)
    streamed = again.streaming_dataset()
    assert [streamed[i] for i in range(30)] == [full[i] for i in range(30)] and again.cache.tokenised == 0
    row = full[3]
    assert len(row["input_ids"]) == 24  # cut at max length (the toy rows are ~30 tokens)
    assert tok.decode([t for t in row["labels"] if t != -100]).startswith("3 plus 3")
    other = RowSource("toy", "train", tok, 32, True)  # another max length is another cache entry
    assert other.cache.get(other.keep[0]) is None


def test_the_progress_line_and_runs_table_show_the_phase_before_step_1(tiny_llama3_dir):
    from streamlit.testing.v1 import AppTest

    from core.config import save_yaml

    toy_version()
    run_dir = runs.run_path("warming")
    run_dir.mkdir(parents=True)
    save_yaml(tiny_cfg(tiny_llama3_dir, run_name="warming"), run_dir / runs.CONFIG)
    jobs.update_status(run_dir, state="running", pid=os.getpid(), step=0, phase="tokenising",
                       phase_done=1200, phase_total=86892)
    fraction, text = jobs.progress_line(jobs.read_status(run_dir))
    assert text == "running: 0/? steps · tokenising 1,200/86,892" and fraction == pytest.approx(1200 / 86892)
    assert runs.list_runs()[0]["progress"] == text

    at = AppTest.from_file("../pages/train.py", default_timeout=60).run()
    assert not at.exception
    shown = " ".join(p.proto.text for p in at.get("progress"))
    assert "tokenising 1,200/86,892" in shown
    table = at.dataframe[0].value
    assert list(table["progress"]) == [text]  # the runs table says it too
    jobs.update_status(run_dir, state="completed", step=4, total=4, phase=None)
    assert "tokenising" not in jobs.progress_line(jobs.read_status(run_dir))[1]
