"""How many threads llama.cpp should generate with right now: the cores other processes leave free.

llama.cpp's threads meet at a barrier after every layer of every token, so when one of them waits for a core
that another process holds, all of them wait. Measured with the embedded SmolLM2 (Q4_1) on this 2-core machine,
generation tok/s with 1 / 2 threads: alone 48.8 / 46.3; beside one busy process 39.4 / 20.0; beside two (what a
CPU training run is) 27.2 / 2.6. So a chat or an evaluation that runs while a run trains takes the cores the
others leave, at least one, and looks again as it goes (`bench/chat_contention.py`).

"Busy" is measured, not guessed: the CPU time all processes used over the last window (/proc/stat) minus this
process's own (`os.times`, every thread of it), divided by the window's wall time. Linux only; elsewhere, and
when IRIS_CHAT_THREADS fixes the count, the count never changes.
"""
from __future__ import annotations

import math
import os
import time

FIRST_WINDOW_S = 0.05  # seconds since the last look below which an answer starts with the last count
WINDOW_S = 0.25  # seconds between looks while answering (a few tokens of a 1B model on 2 cores)
BUSY_FROM = 0.3  # a core that others use more than this fraction of counts as taken


def _others_cpu() -> tuple[float, float] | None:
    """(CPU seconds every process has used since boot minus this process's own, now) or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # everything but idle and iowait, in clock ticks
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK") - (own.user + own.system), time.monotonic()


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def free_cores(busy_others: float, cores: int) -> int:
    """Cores left when other processes keep `busy_others` cores' worth busy; at least 1."""
    return max(1, cores - math.floor(busy_others + (1 - BUSY_FROM)))


class CoreShare:
    """Follows what other processes use and says how many of `limit` threads to run with now. One per engine,
    made when the model loads, so an answer's first look covers the time since the last one (no wait)."""

    def __init__(self, limit: int):
        self.limit = self.current = limit
        self.cores = usable_cores()
        self.last = None if limit <= 1 else _others_cpu()

    def threads(self, min_window_s: float = WINDOW_S) -> int:
        """The count for now: looked at again when `min_window_s` or more has passed since the last look; `limit`
        while IRIS_CHAT_THREADS fixes it (read at each call: a benchmark switches it)."""
        if self.last is None or os.environ.get("IRIS_CHAT_THREADS"):
            return self.limit
        now = _others_cpu()
        if now is None or now[1] - self.last[1] < max(min_window_s, 1e-3):
            return self.current
        busy = max(0.0, (now[0] - self.last[0]) / (now[1] - self.last[1]))
        self.last = now
        self.current = min(self.limit, free_cores(busy, self.cores))
        return self.current
