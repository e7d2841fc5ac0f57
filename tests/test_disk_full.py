"""A full disk while saving a dataset version or a training checkpoint: one sentence saying so (what needed
space, how much is free), nothing partial taken as complete, what was saved before untouched.

The disk is real: a small tmpfs mounted as IRIS_HOME (root only; these tests skip elsewhere), so every
writer (Arrow, safetensors, torch.save, json) meets a true ENOSPC."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from core import runs, versions
from core.errors import IrisError


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """mount(mb) → a fresh tmpfs of `mb` MB, made IRIS_HOME; unmounted after the test."""
    mounted: list[Path] = []

    def mount(mb: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(disk)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(disk)
        monkeypatch.setenv("IRIS_HOME", str(disk))
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(n: int, chars: int, seed: int) -> pd.DataFrame:
    import random

    rng = random.Random(seed)  # random letters: Parquet cannot compress them away
    text = lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(chars))  # noqa: E731
    return pd.DataFrame({"messages": [[{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
                                      for _ in range(n)]})


def test_a_full_disk_while_saving_a_version_says_so_and_keeps_no_partial_version(small_disk):
    disk = small_disk(3)
    versions.save("first", _rows(20, 200, seed=1))
    before = _hashes(disk / "datasets" / "first")
    with pytest.raises(IrisError) as caught:
        versions.save("big", _rows(2000, 1000, seed=2))  # ≈ 4 MB of text on a 3 MB disk
    message = str(caught.value)
    assert message.startswith("the disk is full: saving dataset version 'big' needs more than "), message
    assert " MB free on the disk holding " in message and "Traceback" not in message
    assert [p.name for p in (disk / "datasets").iterdir()] == ["first"]  # no 'big', no hidden .tmp-big-*
    assert [v["name"] for v in versions.list_versions()] == ["first"]
    assert _hashes(disk / "datasets" / "first") == before


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_complete_one(small_disk, tiny_llama3_dir, monkeypatch):
    import transformers

    from core import jobs
    from core.train import lora
    from tests.test_train import tiny_cfg, toy_version

    disk = small_disk(400)  # the pre-save check wants ~200 MB free; a tmpfs only uses what is written
    toy_version(rows=16)
    ballast = disk / "ballast.bin"
    original = transformers.Trainer._save_checkpoint

    def save_on_a_full_disk(self, *args, **kwargs):
        if self.state.global_step == 4:  # fill the disk just before checkpoint-4 is written
            with open(ballast, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError:
                    pass
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save_on_a_full_disk)
    cfg = tiny_cfg(tiny_llama3_dir, max_steps=6, save_steps=2, eval_steps=0, run_name="full")
    run_dir = runs.run_path(cfg.run_name)
    with pytest.raises(IrisError) as caught:
        lora.main(cfg, run_dir)
    message = str(caught.value)
    assert message.startswith("the disk is full: saving checkpoint-4 of run full needs about "), message
    assert runs.list_checkpoints(run_dir) == [2]
    assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]  # torn one gone
    kept = _hashes(run_dir / "checkpoints" / "checkpoint-2")

    ballast.unlink()  # space freed: the run resumes from the last complete checkpoint and finishes
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", original)
    lora.main(cfg, run_dir, resume=True)
    status = jobs.read_status(run_dir)
    assert status["state"] == "completed" and status["resumed_from"] == "checkpoint-2"
    assert runs.list_checkpoints(run_dir) == [2, 4, 6]
    assert _hashes(run_dir / "checkpoints" / "checkpoint-2") == kept


@pytest.mark.slow
def test_a_full_disk_while_writing_a_gguf_leaves_no_gguf_and_the_old_one_untouched(small_disk, tiny_llama3_dir,
                                                                                     tmp_path):
    from core.export import convert

    f16 = convert.convert_hf(tiny_llama3_dir, tmp_path / "tiny-f16.gguf")  # ≈ 17 MB, on the roomy disk
    disk = small_disk(6)
    exports = disk / "exports" / "tiny"
    exports.mkdir(parents=True)
    old = exports / "older-q8_0.gguf"
    old.write_bytes(os.urandom(1_000_000))
    before = _hashes(exports)
    with pytest.raises(IrisError) as caught:
        convert.quantize(f16, exports / "tiny-q8_0.gguf", "q8_0")  # ≈ 9 MB into the 5 MB left
    assert str(caught.value).startswith("the disk is full: quantizing to tiny-q8_0.gguf needs more than "), caught.value
    with pytest.raises(IrisError) as caught:
        convert.convert_hf(tiny_llama3_dir, exports / "tiny-f16.gguf")
    assert str(caught.value).startswith("the disk is full: converting to GGUF (tiny-f16.gguf), "), caught.value
    assert _hashes(exports) == before  # no new GGUF, no partial .tmp, the older export as it was


def test_a_job_that_dies_of_a_full_disk_records_the_sentence_not_the_exception(small_disk):
    """Whatever writer a job's last error came from, its status says 'the disk is full' (Train, Export,
    Evaluate and Data show status errors as they are)."""
    from core import jobs

    disk = small_disk(1)
    job = disk / "runs" / "r"
    job.mkdir(parents=True)
    try:
        with open(disk / "fill.bin", "wb") as f:
            f.write(b"\0" * 2_000_000)
    except OSError as err:  # the real ENOSPC, as a job would get it
        try:
            raise RuntimeError("saving model.safetensors failed") from err
        except RuntimeError as wrapped:
            (disk / "fill.bin").unlink()
            jobs.mark_failed(job, wrapped)
    status = jobs.read_status(job)
    assert status["state"] == "failed"
    assert status["error"].startswith("the disk is full: r (writing its files), ") and "MB free" in status["error"]
