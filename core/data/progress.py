"""Progress of a pass over rows: rows/s and ETA on stderr (the CLI) and in a job's status.json (the page).

    progress = Progress(job_dir)          # job_dir None: stderr only
    progress.start("measure", total_rows)
    progress.advance(10_000)              # prints/updates at most once a second; raises Stopped on a STOP file
    progress.done()

A job folder's STOP file (core.jobs.request_stop) is polled at every advance: the pass ends between pieces,
everything finished so far stays on disk, and the same command resumes from there.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from core import jobs


class Stopped(Exception):
    """A graceful stop was asked for; finished pieces are kept for the next run."""


class Progress:
    def __init__(self, job_dir: Path | None = None, every_s: float = 1.0, stream=None):
        self.job_dir, self.every_s, self.stream = job_dir, every_s, stream or sys.stderr
        self.name, self.total, self.count, self.begun, self.shown, self.unit = "", 0, 0, 0.0, 0.0, "rows"

    def start(self, name: str, total: int, already: int = 0, unit: str = "rows") -> None:
        """A new pass over `total` rows (or other `unit`s: bands, pairs), `already` of them done by an earlier
        run (not counted in the rate)."""
        self.name, self.total, self.count, self.already, self.unit = name, total, already, already, unit
        self.begun = self.shown = time.perf_counter()
        self._show(force=True)

    def advance(self, rows: int) -> None:
        self.count += rows
        if self.job_dir is not None and jobs.stop_requested(self.job_dir):
            raise Stopped(f"stopped during {self.name} at {self.count:,}/{self.total:,} {self.unit}")
        if time.perf_counter() - self.shown >= self.every_s:
            self._show()

    def done(self) -> None:
        self._show(force=True)

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.begun
        return (self.count - self.already) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        text = f"{self.name}: {self.count:,}/{self.total:,} {self.unit}"
        if rate > 0:  # a slow unit (bands: one every few seconds) keeps two decimals
            text += f" · {rate:,.0f} {self.unit}/s" if rate >= 10 else f" · {rate:.2f} {self.unit}/s"
            if self.count < self.total:
                text += f" · ETA {(self.total - self.count) / rate:,.0f} s"
        return text

    def _show(self, force: bool = False) -> None:
        self.shown = time.perf_counter()
        line = self.line()
        print(line, file=self.stream, flush=True)
        if self.job_dir is not None:
            rate = self.rate()
            eta = (self.total - self.count) / rate if rate > 0 and self.count < self.total else None
            jobs.update_status(self.job_dir, state="running", step=self.count, total=self.total, eta_s=eta,
                               message=line, phase=self.name, unit=self.unit)
