"""llama.cpp's thread count follows the cores other processes leave free (core.inference.threads): beside a busy
process a chat or an evaluation runs with fewer threads instead of waiting at every layer for a taken core."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from core.inference.threads import CoreShare, free_cores

CORES = len(os.sched_getaffinity(0))
many_cores = pytest.mark.skipif(CORES < 2 or not os.path.exists("/proc/stat"), reason="needs 2+ cores and /proc/stat")


def test_free_cores_counts_a_core_as_taken_from_a_third_of_it():
    assert [free_cores(b, 2) for b in (0.0, 0.29, 0.31, 1.0, 1.6, 2.0, 5.0)] == [2, 2, 1, 1, 1, 1, 1]
    assert [free_cores(b, 8) for b in (0.0, 1.0, 2.5, 7.9)] == [8, 7, 5, 1]


def test_one_thread_is_never_more():
    share = CoreShare(1)
    assert share.threads(min_window_s=0) == 1 and share.last is None


class busy_processes:
    """`n` Python busy loops at this process's priority, as a CPU training run's threads look to the scheduler."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


@many_cores
def test_beside_a_process_on_every_core_one_thread_is_used():
    with busy_processes(CORES):
        share = CoreShare(CORES)
        time.sleep(0.4)
        assert share.threads(min_window_s=0) == 1
        assert share.threads(min_window_s=60) == 1  # too soon to look again: the last count


@many_cores
@pytest.mark.slow
def test_a_chat_answer_beside_busy_processes_generates_with_one_thread():
    """The embedded model through the real engine: llama.cpp's context is switched to one thread during the
    answer beside a busy process on every core, and back when they are gone."""
    from core import inference, models

    engine = inference.EngineCache().load(models.EMBEDDED_ID)
    settings = inference.DecodingSettings(temperature=0.0, max_new_tokens=48)
    question = [{"role": "user", "content": "Name three colours of the rainbow."}]
    with busy_processes(CORES):
        beside = engine.generate(question, settings).text
        assert engine._threads_now == 1 and beside.strip()
    engine.reset_cache()  # the next answer starts from one thread and looks again
    assert engine.generate(question, settings).text.strip()
