"""Launch → step 1 quickly: a run tokenises only the rows it reads, caches them, and the order stays the seed's."""
from __future__ import annotations

import gc
import os
import time

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
    from core.config import save_yaml

    cfg = tiny_cfg(tiny_llama3_dir, run_name="first", eval_steps=0)
    runs.run_path("first").mkdir(parents=True)
    save_yaml(cfg, runs.run_path("first") / runs.CONFIG)  # as lora.start writes it, then jobs.launch marks the Launch
    jobs.update_status(runs.run_path("first"), started=time.time())
    first = lora.main(cfg)
    assert gc.get_freeze_count() == 0  # the run froze what lived before step 1, and let it go at the end
    status = jobs.read_status(first)
    # when each phase began, from Launch, in order (the bench's per-phase table reads these)
    times = status["phase_times"]
    assert list(times) == ["importing libraries", "preparing base model", "loading model", "reading rows",
                           "building trainer", "first step", "step 1 done"], times
    assert list(times.values()) == sorted(times.values()) and list(status["phase_cpu"]) == list(times)
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
    assert again._column is None  # every row came from the cache: the version's conversations were never read
    row = full[3]
    assert len(row["input_ids"]) == 24  # cut at max length (the toy rows are ~30 tokens)
    assert tok.decode([t for t in row["labels"] if t != -100]).startswith("3 plus 3")
    other = RowSource("toy", "train", tok, 32, True)  # another max length is another cache entry
    assert other.cache.get(other.keep[0]) is None


def test_a_fully_tokenised_version_opens_without_reading_its_tokens_or_hashing_them(tiny_llama3_dir):
    """A run on a version tokenised in full spent ~4 s before step 1 reading every cached token table and
    pickling them (the streaming dataset's transform held them, and datasets fingerprints a transform by
    pickling it). Now the cache opens on its row numbers, reads a part's tokens when a row of it is asked for,
    and the transform pickles as its cache key."""
    import copy
    import pickle

    from datasets.utils._dill import dumps
    from transformers import AutoTokenizer

    from core.errors import IrisError
    from core.train import tokens
    from core.train.backends import set_training_template
    from core.train.tokens import RowSource

    toy_version(rows=30, eval_rows=0)
    tok = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    set_training_template(tok, True)
    first = RowSource("toy", "train", tok, 24, True)
    small = len(dumps(first.streaming_dataset().format["format_kwargs"]["transform"]))
    for i in range(30):
        first.encode(i)
        if i % 10 == 9:
            first.cache.flush()  # three part files
    full = first.full_dataset()

    again = RowSource("toy", "train", tok, 24, True)
    assert len(again.cache) == 30 and len(again.cache.parts) == 3
    assert all(part is not None for part in again.cache.parts)  # no part's tokens read yet
    streamed = again.streaming_dataset()
    transform = streamed.format["format_kwargs"]["transform"]
    assert len(dumps(transform)) == small < 300  # what datasets hashes: the key, whatever the cache holds
    assert streamed[12] == full[12] and again.cache.tokenised == 0
    assert sum(part is None for part in again.cache.parts) == 1  # only the part holding row 12 was read
    assert [copy.deepcopy(streamed)[i] for i in range(30)] == [full[i] for i in range(30)]
    assert pickle.loads(pickle.dumps(transform)).source is again
    tokens._SOURCES.clear()  # as in another process
    with pytest.raises(IrisError, match="cannot be sent to another process"):
        pickle.loads(pickle.dumps(transform))


def test_the_tokenizer_fingerprint_follows_added_and_special_tokens(tiny_llama3_dir):
    from transformers import AutoTokenizer

    from core.train.tokens import tokenizer_fingerprint

    tok = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    before = tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(tok) == before
    tok.pad_token = "<|eot_id|>" if tok.pad_token != "<|eot_id|>" else "<|begin_of_text|>"
    padded = tokenizer_fingerprint(tok)
    assert padded != before
    tok.add_tokens(["zqxjk-new-token"])
    assert tokenizer_fingerprint(tok) not in (before, padded)
    fresh = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    assert tokenizer_fingerprint(fresh) == before


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


def test_the_rows_of_step_1_are_cached_when_it_ends_and_later_ones_every_30_s(tiny_llama3_dir):
    """A run killed right after its first logged step (the bench does that) leaves that step's rows cached."""
    from transformers import AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

    from core.train.backends import set_training_template
    from core.train.tokens import FLUSH_EVERY_S, RowSource, flush_callback

    toy_version(rows=30, eval_rows=0)
    tok = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    set_training_template(tok, True)
    source = RowSource("toy", "train", tok, 24, True)
    callback, state, control = flush_callback([source]), TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    for i in range(4):  # step 1's rows
        source.encode(i)
    assert cached_rows() == 0
    callback.on_step_end(args, state, control)
    assert cached_rows() == 4  # on disk before the step's loss is logged (on_log comes after on_step_end)
    source.encode(4)
    callback.on_step_end(args, state, control)
    assert cached_rows() == 4  # not one part file per step: the next flush waits FLUSH_EVERY_S
    callback.last -= FLUSH_EVERY_S
    callback.on_step_end(args, state, control)
    assert cached_rows() == 5


def test_the_estimate_reads_a_few_rows_and_the_row_count_not_the_whole_version(tiny_llama3_dir, monkeypatch):
    from core import versions
    from core.train.estimate import estimate, mean_sample_tokens

    toy_version(rows=40, eval_rows=0)
    rows = versions.load("toy")
    chars = sum(len(m["content"]) + 8 for msgs in rows["messages"].head(10) for m in msgs)

    def whole_version(*args, **kwargs):
        raise AssertionError("the estimate read the whole version (52 s for 100k FineTome rows)")

    monkeypatch.setattr(versions, "load", whole_version)
    assert mean_sample_tokens("toy", limit=10) == (pytest.approx(chars / 10 / 3.6), 40)
    assert estimate(tiny_cfg(tiny_llama3_dir, eval_steps=0)).steps == 4
    assert mean_sample_tokens("gone") is None


@pytest.mark.parametrize("last,tick", [(1, 1), (4, 1), (10, 1), (11, 2), (30, 5), (1000, 100), (1001, 200)])
def test_the_loss_curve_ticks_whole_steps(last, tick):
    import json

    from core.train.curves import curves_figure

    run = runs.run_path("ticks")
    run.mkdir(parents=True)
    rows = [{"step": s, "loss": 2.0, "lr": 1e-4} for s in range(1, last + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    axis = curves_figure(["ticks"], "ticks").layout.xaxis
    assert (axis.tick0, axis.dtick, axis.tickformat) == (0, tick, "d")  # plotly's own ticks fell on half steps


@pytest.mark.slow
def test_launch_hands_the_run_to_a_warm_process(home_with_model, monkeypatch):
    """The Train page keeps a process with the training libraries imported and the embedded base model loaded;
    Launch gives it the run, which starts from that model instead of reading it again."""
    from core.models import EMBEDDED_ID
    from core.train import launch
    from core.train.estimate import estimate
    from core.train.warm import warm_ready

    monkeypatch.setenv("IRIS_WARM_START", "1")

    toy_version(rows=40, eval_rows=0)
    cfg = tiny_cfg(EMBEDDED_ID, run_name="warm", eval_steps=0, max_seq_length=48)
    cold = estimate(cfg).parts["startup_s"]
    assert warm_ready(EMBEDDED_ID) == "" and cold["importing libraries"] > 0
    pid = launch.warm_up()
    assert pid and launch.warm_up() is None  # one at a time
    deadline = time.time() + 900
    while not (launch.warm_dir() / f"{pid}.ready").exists():
        assert time.time() < deadline and jobs.pid_alive(pid), (launch.warm_dir() / "warm.log").read_text()
        time.sleep(0.2)
    assert warm_ready(EMBEDDED_ID) == "model" and warm_ready("other/model") == "imports"
    ready = estimate(cfg).parts["startup_s"]  # the estimate counts what the warm process has already done
    assert ready["importing libraries"] == 0 and ready["loading model"] < cold["loading model"]
    run_dir = lora.start(cfg)
    assert launch.warm_up() is None  # not while a run starts: its imports would take a core from the run
    assert jobs.read_status(run_dir)["pid"] == pid and jobs.read_status(run_dir)["warm"]
    while jobs.read_status(run_dir)["state"] in jobs.ACTIVE:
        assert time.time() < deadline, jobs.tail(run_dir / runs.LOG)
        time.sleep(0.5)
    status = jobs.read_status(run_dir)
    assert status["state"] == "completed", jobs.tail(run_dir / runs.LOG)
    assert len(losses(run_dir)) == 4
    assert list(status["phase_times"])[0] == "handing over to a warm process" and "step 1 done" in status["phase_times"]
    assert "was loaded while the process waited" in (run_dir / runs.LOG).read_text()
    assert not list(launch.warm_dir().glob(f"{pid}.*"))  # its marks are gone with it
    assert f"warm process {pid}: kernels warm" in (launch.warm_dir() / "warm.log").read_text()


def test_a_cpu_training_process_keeps_the_memory_its_steps_free(monkeypatch):
    """glibc silently ignores a tunable it does not know: the setting must really stop the page faults of a
    step's worth of fresh tensors (~70k in every step of the CPU-quick preset, 0 with it)."""
    import subprocess
    import sys

    from core.train.launch import KEEP_FREED_MEMORY, job_env

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert job_env() == {"GLIBC_TUNABLES": KEEP_FREED_MEMORY}  # this machine has no GPU
    probe = ("import resource, torch\n"
             "def step():\n"
             "    # 80 MB of activations and an 80 MB logits tensor (beyond what glibc's own threshold keeps), freed\n"
             "    kept = [torch.ones(1_000_000 + i) for i in range(20)] + [torch.ones(20_000_000)]\n"
             "    return sum(float(t[0]) for t in kept)\n"
             "faults = []\n"
             "for _ in range(6):\n"
             "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "    step()\n"
             "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
             "print(min(faults[2:]))  # glibc settles its reuse of the freed blocks over the first steps\n")
    faults = {}
    for label, env in (("default", {}), ("kept", job_env())):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             env={**os.environ, "GLIBC_TUNABLES": "", **env})
        faults[label] = int(out.stdout.split()[-1])
    assert faults["default"] > 10_000 and faults["kept"] < 1_000, faults  # fewest of steps 3–6; 160 MB: ~40k pages
    own = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    out = subprocess.run([sys.executable, "-c", "from core.train.launch import job_env; print(job_env())"],
                         capture_output=True, text=True, check=True, env=own, cwd=jobs.REPO_ROOT)
    assert f"glibc.malloc.arena_max=2:{KEEP_FREED_MEMORY}" in out.stdout  # the user's own tunables stay


def test_warming_the_kernels_leaves_the_preloaded_model_as_it_was(tiny_llama3_dir):
    import torch

    from core.train import backends

    backends.preload(tiny_llama3_dir)
    try:
        (model, _), = backends._PRELOADED.values()
        before = {n: (p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()}
        backends.warm_kernels(rows=2, tokens=16)
        after = dict(model.named_parameters())
        assert all(after[n].requires_grad == grad and torch.equal(after[n], w) for n, (grad, w) in before.items())
        assert all(p.grad is None for p in after.values())
    finally:
        backends._PRELOADED.clear()
