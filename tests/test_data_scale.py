"""Out-of-core recipe engines (core.data.engine_duckdb / engine_ray): the in-memory path's exact result
(kept rows, reasons, funnel, content hash), whatever the piece size; bad input and kills never leave a
partial version."""
import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from core import jobs, versions
from core.data import bigdata, candidates, engine_duckdb, engine_ray, shards, store
from core.data.filters import DataRecipe, apply_recipe, default_recipe
from core.data.progress import Progress
from core.errors import IrisError
from core.paths import REPO_ROOT


def in_memory(version: str, recipe: DataRecipe):
    df, _ = store.load_version_rows(version)
    return apply_recipe(df, recipe)


def out_of_core(version: str, recipe: DataRecipe, runner, chunk_rows: int, tag: str):
    files = engine_duckdb.version_files(version)
    return engine_duckdb.run_recipe(files, recipe, engine_duckdb.work_dir(tag), runner, Progress(), chunk_rows, tag)


def assert_same(a, b):
    assert (a.kept == b.kept).all()
    assert list(a.reasons) == list(b.reasons)
    strip = [{k: v for k, v in f.items() if k != "seconds"} for f in a.funnel]
    assert strip == [{k: v for k, v in f.items() if k != "seconds"} for f in b.funnel]


@pytest.fixture(scope="module")
def planted_rows(tmp_path_factory):
    """20k FineTome-shaped rows with planted exact and near duplicates (bench/data_pipeline.py's generator)."""
    spec = importlib.util.spec_from_file_location("data_pipeline", REPO_ROOT / "bench" / "data_pipeline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows, planted = bench.build_rows(20_000)
    path = tmp_path_factory.mktemp("planted") / "rows.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path, planted


def test_duckdb_engine_saves_the_in_memory_result_on_the_sample(iris_home):
    store.import_source("sample", "s")
    recipe = default_recipe()
    recipe.eval_fraction = 0.1
    expected = in_memory("s", recipe)
    assert expected.funnel[-1]["dropped"] > 0  # near duplicates were found: the comparison means something
    # pieces of 97 rows: the write pass's shards (one a piece, written by 2 workers finishing in any order)
    # and its content hash (taken in row order, train rows then eval rows) must still give the same version
    bigdata.filter_any("s", recipe, "big", engine="duckdb", workers=2, chunk_rows=97)
    store.save_filtered(expected, recipe, "mem", {"version": "s"})
    assert len(shards.split_files(versions.version_dir("big"), "eval")) > 1
    big, mem = versions.load_manifest("big"), versions.load_manifest("mem")
    assert big["content_hash"] == mem["content_hash"]
    assert big["rows"] == mem["rows"] and big["dropped_by_reason"] == mem["dropped_by_reason"]
    assert (versions.version_dir("big") / "train.parquet").is_dir()  # shards, read back as one table
    pd.testing.assert_frame_equal(versions.load("big"), versions.load("mem"))
    assert not engine_duckdb.work_dir("big").exists()  # the passes' work is gone once the version is saved
    dropped = pd.read_parquet(versions.version_dir("big") / "dropped.parquet")
    assert dropped["row"].tolist() == np.flatnonzero(~expected.kept).tolist()
    assert dropped["reason"].tolist() == list(expected.reasons[~expected.kept])


def test_piece_size_does_not_change_results(iris_home):
    store.import_source("sample", "s")
    df, _ = store.load_version_rows("s")
    versions.save("small", df.iloc[:300])
    recipe = default_recipe()
    runner = engine_duckdb.LocalRunner(1)
    assert_same(out_of_core("small", recipe, runner, 7, "seven"), out_of_core("small", recipe, runner, 10_000, "ten-k"))


def test_candidates_do_not_depend_on_how_many_bands_are_sorted_at_once(iris_home, monkeypatch):
    store.import_source("sample", "s")
    df, _ = store.load_version_rows("s")
    versions.save("small", df.iloc[:600])
    recipe, runner = default_recipe(), engine_duckdb.LocalRunner(1)
    whole = out_of_core("small", recipe, runner, 100, "all-bands")  # 600 rows: every band in one sort
    all_pairs = np.fromfile(engine_duckdb.work_dir("all-bands") / candidates.PAIRS, dtype="<i8")
    monkeypatch.setattr(candidates, "BAND_ROWS", 1)  # one band a sort: 64 reads of one row group each
    monkeypatch.setattr(candidates, "MERGE_CODES", 320)  # the 64 run files merged 5 codes of each at a time
    monkeypatch.setattr(candidates, "READ_CODES", 50)  # and verify reads them back 50 at a time
    one = out_of_core("small", recipe, runner, 100, "one-band")
    codes = np.fromfile(engine_duckdb.work_dir("one-band") / candidates.PAIRS, dtype="<i8")
    pairs = candidates.decode(codes)
    assert len(pairs) > 0 and (pairs[:, 0] < pairs[:, 1]).all()
    np.testing.assert_array_equal(codes, all_pairs)
    assert (np.diff(pairs[:, 0] * len(df) + pairs[:, 1]) > 0).all()  # unique, sorted by (i, j)
    assert_same(one, whole)
    # the same candidates as the in-memory path's LSH on the same signatures
    from core.data import dedup
    from core.data.measure import base_threshold_for

    sigs = np.concatenate([np.load(p) for p in sorted((engine_duckdb.work_dir("one-band") / "sigs").glob("*.npy"))])
    expected = dedup.lsh_candidates(sigs, base_threshold_for(0.5))
    np.testing.assert_array_equal(pairs, expected[np.lexsort((expected[:, 1], expected[:, 0]))])


def test_out_of_core_merge_equals_the_in_memory_union(tmp_path):
    rng = np.random.default_rng(0)
    runs = [np.unique(rng.integers(0, 1500, size=int(rng.integers(0, 400)))) for _ in range(9)]
    runs.append(np.arange(1490, 1500))  # a run that starts past the others' ends
    runs.append(np.zeros(0, dtype=np.int64))  # and an empty one
    paths = []
    for k, run in enumerate(runs):
        paths.append(tmp_path / f"run-{k}.i64")
        run.astype("<i8").tofile(paths[-1])
    expected = np.unique(np.concatenate(runs))
    for memory in (1, 11, 100, 10**6):  # a code of each file at a time, ..., everything at once
        read = []
        n = candidates.merge(paths, tmp_path / "out.i64", memory_codes=memory, on_chunk=read.append)
        merged = np.fromfile(tmp_path / "out.i64", dtype="<i8")
        np.testing.assert_array_equal(merged, expected)
        assert n == len(expected) and sum(read) == sum(len(r) for r in runs)
        back = np.concatenate(list(candidates.read_chunks(tmp_path / "out.i64", 13)))
        np.testing.assert_array_equal(back, expected)


def test_each_row_is_normalised_and_minhashed_once_out_of_core(iris_home, monkeypatch):
    from core.data import dedup

    store.import_source("sample", "s")
    df, _ = store.load_version_rows("s")
    versions.save("small", df.iloc[:300])
    expected = in_memory("small", default_recipe())
    calls = {"normalised": 0, "signed": 0}
    normalise, block = dedup.normalise_text, dedup.signature_block

    def counted_normalise(text):
        calls["normalised"] += 1
        return normalise(text)

    def counted_block(sh, sd, n_docs, num_perm=256):
        calls["signed"] += n_docs
        return block(sh, sd, n_docs, num_perm)

    monkeypatch.setattr(dedup, "normalise_text", counted_normalise)
    monkeypatch.setattr(dedup, "signature_block", counted_block)
    got = out_of_core("small", default_recipe(), engine_duckdb.LocalRunner(1), 100, "once")
    # the exact-dedup text was normalised twice a row, and verify re-made the signatures of every row in a
    # candidate pair; now pass 1 does both once and verify reads the signatures it saved
    assert calls == {"normalised": 300, "signed": 300}
    assert_same(got, expected)


def test_local_workers_end_after_a_piece_pass(iris_home):
    store.import_source("sample", "s")
    df, _ = store.load_version_rows("s")
    versions.save("small", df.iloc[:200])
    work = engine_duckdb.work_dir("idle")
    engine_duckdb._state(work, "idle")
    runner = engine_duckdb.LocalRunner(2)
    try:
        engine_duckdb.measure_pass(shards.pieces(engine_duckdb.version_files("small"), 100), work, default_recipe(),
                                   runner, Progress())
        # idle workers held ≈ 0.5 GiB each through the passes the parent runs alone (2M rows: the tree's peak)
        assert runner.pool is None
        assert len(list((work / "measure").glob("piece-*.parquet"))) == 2
    finally:
        runner.close()


@pytest.mark.slow
def test_duckdb_engine_matches_memory_on_20k_planted_rows(iris_home, planted_rows):
    path, planted = planted_rows
    store.import_source(str(path), "gen")
    recipe = default_recipe()
    expected = in_memory("gen", recipe)
    why = expected.reasons.astype(str)
    assert sum(why[c].startswith("near_dedup") or why[o].startswith("near_dedup") for o, c in planted) > 400
    runner = engine_duckdb.LocalRunner(2)
    try:
        assert_same(out_of_core("gen", recipe, runner, 3000, "duck"), expected)
    finally:
        runner.close()


@pytest.mark.slow
def test_local_ray_of_two_cpus_matches_memory(iris_home):
    store.import_source("sample", "s")
    df, _ = store.load_version_rows("s")
    versions.save("part", df.iloc[:800])
    recipe = default_recipe()
    start = time.time()
    runner = engine_ray.RayRunner(None, 2)
    try:
        got = out_of_core("part", recipe, runner, 400, "ray")
    finally:
        runner.close()
    seconds = time.time() - start
    assert_same(got, in_memory("part", recipe))
    # ≈ 30-60 s on an idle 2-core machine, most of it starting Ray; the bound only catches a hang
    # (a machine shared by many test runs took 456 s)
    assert seconds < 600


def test_ray_address_that_does_not_answer_is_one_sentence_fast():
    start = time.time()
    with pytest.raises(IrisError, match=r"the Ray cluster at 127.0.0.1:1 did not answer"):
        engine_ray.check_address("127.0.0.1:1")
    assert time.time() - start <= 10


def sample_in_1000_row_shards(name: str = "s"):
    """The bundled sample saved as version `name`, its train split rewritten as 1000-row Parquet shards: (rows,
    version folder)."""
    import pyarrow as pa

    store.import_source("sample", name)
    df, _ = store.load_version_rows(name)
    folder = versions.version_dir(name)
    (folder / "train.parquet").unlink()
    writer = shards.ShardWriter(folder / "train.parquet", shard_rows=1000)
    writer.write(pa.Table.from_pandas(df, preserve_index=False))
    writer.close()
    return df, folder


def test_a_shard_that_fails_to_parse_names_file_and_rows_and_saves_nothing(iris_home):
    df, folder = sample_in_1000_row_shards()
    broken = folder / "train.parquet" / "part-00002.parquet"
    data = bytearray(broken.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4000] = b"\0" * 4000  # a torn middle: the footer still reads
    broken.write_bytes(bytes(data))
    with pytest.raises(IrisError, match=r"part-00002.parquet failed to parse at rows .* \(dataset rows from 2"):
        bigdata.filter_any("s", default_recipe(), "out", engine="duckdb", workers=1)
    assert not versions.exists("out") and not any(p.name.startswith(".tmp-out") for p in folder.parent.iterdir())


def test_opening_a_row_of_a_big_version_reads_only_its_shard(iris_home):
    from core.data import bigview

    df, folder = sample_in_1000_row_shards()
    for row in (0, 999, 1000, len(df) - 1):
        assert bigview.open_row("s", row) == [dict(m) for m in df["messages"].iat[row]]
    assert bigview.open_row("s", len(df)) == []
    broken = folder / "train.parquet" / "part-00002.parquet"
    broken.write_bytes(broken.read_bytes()[:100])  # another shard unreadable: a scan of every row would fail
    assert bigview.open_row("s", 5) == [dict(m) for m in df["messages"].iat[5]]


def test_a_page_of_a_big_version_spans_shards_and_reads_only_its_own(iris_home):
    from core.data import bigview

    df, folder = sample_in_1000_row_shards()
    table, total = bigview.browse("s", 20)  # rows 950–999 in shard 0; page 21 holds 1000–1049 of shard 1
    assert total == len(df) and table["row"].tolist() == list(range(950, 1000))
    broken = folder / "train.parquet" / "part-00002.parquet"
    broken.write_bytes(broken.read_bytes()[:100])  # a shard the page does not touch cannot fail it
    table, _ = bigview.browse("s", 21)
    assert table["row"].tolist() == list(range(1000, 1050))
    assert table["turns"].tolist() == [len(m) for m in df["messages"].iloc[1000:1050]]


def test_not_enough_disk_says_how_much_before_starting(tmp_path):
    from core.paths import free_disk_bytes

    with pytest.raises(IrisError, match=r"filtering 5 rows needs about .* GiB free on .* only .* GiB is left"):
        shards.check_disk(tmp_path, free_disk_bytes(tmp_path) + 2**30, "filtering 5 rows")


@pytest.mark.slow
def test_kill_9_mid_pass_then_rerun_resumes_and_never_leaves_a_partial_version(iris_home, tmp_path):
    store.import_source("sample", "s")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(default_recipe().to_yaml())
    argv = ["filter", "s", "--recipe", str(recipe_path), "--name", "out", "--engine", "duckdb", "--chunk-rows", "200",
            "--workers", "1"]
    job = bigdata.job_dir("out")
    jobs.launch(job, jobs.python_module_argv("core.data", *argv, "--job-dir", job))
    measured = engine_duckdb.work_dir("out") / "measure"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(measured.glob("piece-*.parquet"))) < 3:
        time.sleep(0.5)
    done_before = len(list(measured.glob("piece-*.parquet")))
    assert done_before >= 3
    os.killpg(os.getpgid(jobs.read_status(job)["pid"]), signal.SIGKILL)
    time.sleep(1)
    assert jobs.read_status(job)["state"] == "died" and not versions.exists("out")
    out = subprocess.run([sys.executable, "-m", "core.data", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ})
    assert out.returncode == 0, out.stderr
    # the re-run started its measure pass with the killed run's pieces already counted as done
    first = next(line for line in out.stderr.splitlines() if line.startswith("measure:"))
    assert int(first.split()[1].split("/")[0].replace(",", "")) >= done_before * 200
    assert "rows/s" in out.stderr and "ETA" in out.stderr
    # the candidate pass shows bands done of all bands, then the merge of their pairs, then the signature check
    assert "candidates: 0/64 bands" in out.stderr and "candidates: 64/64 bands · " in out.stderr
    assert "merge pairs: " in out.stderr and "verify: signatures: " in out.stderr
    expected = in_memory("s", default_recipe())
    assert versions.load_manifest("out")["rows"]["train"] == int(expected.kept.sum())


def test_eval_mask_is_versions_split():
    df = pd.DataFrame({"x": np.arange(101)})
    _, held = versions.split(df, 0.1, seed=3)
    assert np.flatnonzero(engine_duckdb.eval_mask(101, 0.1, 3)).tolist() == held["x"].tolist()


@pytest.mark.slow
def test_data_page_browses_searches_and_filters_a_version_over_the_in_memory_threshold(iris_home, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store.import_source("sample", "s")
    monkeypatch.setenv("IRIS_INMEMORY_ROWS", "1000")  # the sample's 3,077 rows count as big
    loads = []
    load_for_edit = store.load_for_edit
    monkeypatch.setattr(store, "load_for_edit", lambda *a: loads.append(a) or load_for_edit(*a))
    at = AppTest.from_file("../pages/data.py", default_timeout=300).run()
    at.radio[0].set_value("Saved version").run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert loads == []  # Load read the whole version into the app first (2M rows: minutes and GiBs)
    assert "`True`" not in [m.value for m in at.markdown]  # Streamlit's magic wrote a bare expression's value
    assert any("queried on disk" in c.value for c in at.caption)
    assert "measure" not in str(at.session_state)  # nothing was loaded or measured in the app
    at.text_input(key="big_query").set_value("capital").run()
    assert any(c.value.startswith("23 rows match") for c in at.caption)
    at.checkbox(key="big_regex").check().run()
    at.text_input(key="big_query").set_value(r"scored \d+ points").run()
    matches = next(c.value for c in at.caption if "rows match" in c.value)
    table = at.dataframe[0].value
    assert int(matches.split()[0]) == len(table) or len(table) == 50
    at.number_input(key="big_row").set_value(int(table["row"].iat[0])).run()
    assert at.chat_message and "scored" in at.chat_message[0].markdown[0].value
    at.text_input(key="big_name").set_value("big-clean").run()
    at.button(key="big_launch").click().run()
    assert not at.exception, at.exception
    status = jobs.wait(bigdata.job_dir("big-clean"), timeout_s=300)
    assert status["state"] == "completed", status
    assert versions.load_manifest("big-clean")["rows"]["train"] == int(in_memory("s", default_recipe()).kept.sum())


def test_streamed_import_matches_the_in_memory_import_and_names_a_bad_line(iris_home, tmp_path):
    from core.data import bigimport

    sample = (REPO_ROOT / "data" / "samples" / "finetome_sample.jsonl").read_text().splitlines()[:500]
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(sample) + "\n")
    bigimport.import_big(good, "streamed", keep_broken_roles=True, block_rows=64)
    store.import_source(str(good), "whole", keep_broken_roles=True)
    assert versions.load_manifest("streamed")["content_hash"] == versions.load_manifest("whole")["content_hash"]
    pd.testing.assert_frame_equal(versions.load("streamed"), versions.load("whole"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(sample[:300] + ["{oops"] + sample[300:]) + "\n")
    with pytest.raises(IrisError, match=r"bad.jsonl: malformed JSON on line 301"):
        bigimport.import_big(bad, "broken", keep_broken_roles=True, block_rows=64)
    assert not versions.exists("broken") and not list(versions.datasets_dir().glob(".tmp-broken*"))


def test_a_stopped_filter_job_says_so_and_the_same_command_resumes(iris_home):
    store.import_source("sample", "s")
    df, _ = store.load_version_rows("s")
    versions.save("small", df.iloc[:300])
    job = bigdata.job_dir("out")
    job.mkdir(parents=True)
    (job / jobs.STOP_FILE).write_text("now")  # as the page's Stop button leaves it
    with pytest.raises(IrisError, match="stopped during measure"):
        bigdata.filter_any("small", default_recipe(), "out", engine="duckdb", workers=1, chunk_rows=100, job_dir=job)
    assert jobs.read_status(job)["state"] == "stopped" and not versions.exists("out")
    (job / jobs.STOP_FILE).unlink()
    bigdata.filter_any("small", default_recipe(), "out", engine="duckdb", workers=1, chunk_rows=100, job_dir=job)
    status = jobs.read_status(job)
    assert status["state"] == "completed" and status["step"] == status["total"] == 300
    assert versions.load_manifest("out")["rows"]["train"] == int(in_memory("small", default_recipe()).kept.sum())


def test_cli_streams_a_jsonl_over_the_upload_limit_with_engine_duckdb(iris_home, tmp_path):
    sample = (REPO_ROOT / "data" / "samples" / "finetome_sample.jsonl").read_text().splitlines()[:200]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(sample) + "\n")
    env = {**os.environ, "IRIS_HOME": str(iris_home), "IRIS_MAX_UPLOAD_MB": "0.001"}
    args = [sys.executable, "-m", "core.data", "import", str(path), "--name", "big", "--keep-broken-roles"]
    refused = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "limit" in refused.stderr
    out = subprocess.run(args + ["--engine", "duckdb"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert versions.load_manifest("big")["rows"]["train"] == 200
    assert len(shards.split_files(versions.version_dir("big"))) == 1


def test_row_lines_are_the_bytes_hash_rows_hashes():
    """passes.row_lines (the write pass's serialisation, from Arrow when the types allow) gives exactly what
    versions.hash_rows feeds sha256 for the same rows read through pandas, on FineTome's shape and on types
    that read back differently through pandas (ints with nulls, nested numbers, a stored index)."""
    import hashlib

    import pyarrow as pa

    from core.data import passes

    msgs = [[{"role": "user", "content": "é \"q\"\n"}, {"role": "assistant", "content": "🙂"}], [], None]
    tables = {
        "fine-tome": pa.table({"messages": msgs, "source": ["a", None, "ü"], "score": [1.5, float("nan"), None],
                               "n": pa.array([1, 2, 3], pa.int64()), "ok": [True, None, False]}),
        "int-nulls": pa.table({"messages": msgs, "n": pa.array([1, None, 3], pa.int64())}),
        "nested-numbers": pa.table({"messages": [[{"role": "user", "content": "x", "weight": 0.5}],
                                                 [{"role": "user", "content": "y", "weight": float("nan")}],
                                                 [{"role": "user", "content": "z", "weight": None}]]}),
        "stored-index": pa.Table.from_pandas(pd.DataFrame({"source": ["a", "b", "c"]}, index=[5, 6, 7])),
    }
    fast = {"fine-tome": True, "int-nulls": False, "nested-numbers": False, "stored-index": False}
    for name, table in tables.items():
        assert passes._same_through_pandas(table) is fast[name], name
        want, got = hashlib.sha256(), hashlib.sha256(passes.row_lines(table))
        versions.hash_rows(want, table.to_pandas())
        assert got.hexdigest() == want.hexdigest(), name


def test_the_data_page_imports_pandas_in_the_background_before_a_big_version_opens():
    """Streamlit imports pandas at the first st.dataframe; on a cold app that import was most of the time to
    a big version's page 1, so ui.big_version starts it in a thread when the page loads."""
    code = ("import sys, threading\n"
            "import ui.big_version\n"
            "warm = [t for t in threading.enumerate() if t.name == 'iris-prewarm-pandas']\n"
            "[t.join(120) for t in warm]\n"
            "print(len(warm) <= 1, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]
    # nothing else on the import path loads pandas: without the thread it would not be there
    code = ("import sys, threading\n"
            "threading.Thread.start = lambda self: None\n"
            "import ui.big_version\n"
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False"], out.stderr[-2000:]


def test_a_pass_counted_in_bands_says_bands_on_the_page(tmp_path):
    jobs.update_status(tmp_path, pid=os.getpid())  # this process plays the job
    progress = Progress(tmp_path, every_s=0)
    progress.start("candidates", 64, unit="bands")
    progress.advance(3)
    fraction, text = jobs.progress_line(jobs.read_status(tmp_path), "rows")  # the page's panel asks for rows
    assert fraction == 3 / 64 and text.startswith("running: 3/64 bands") and "bands/s" in text and "ETA" in text
    progress.start("write", 100)
    assert jobs.progress_line(jobs.read_status(tmp_path), "rows")[1].startswith("running: 0/100 rows")

