"""Start the app the way a user does (README command 1, `make app`) on a free port, with a fresh IRIS_HOME,
and drive it in Debian's headless Chromium through Playwright."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect

from core.paths import REPO_ROOT

# A rerun on 2 cores shared with a training job or the rest of the suite can take well over Playwright's default 5 s
# for an `expect`; every browser test imports this module, so each assertion waits up to a minute instead.
expect.set_options(timeout=60_000)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic"]
ARTIFACTS = REPO_ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(home: Path, timeout_s: float = 900, host: str | None = None, env: dict | None = None,
                set_up: bool = True):
    """`make app PORT=<free> [HOST=host]` in its own process session (extra `env` set for it); yields the base
    URL; kills the session after. `set_up=False` starts the server alone (`python -m ui.serve`, what `make app`
    runs after set-up)."""
    port = free_port()
    env = {**os.environ, "IRIS_HOME": str(home), "PORT": str(port), **(env or {})}
    home.mkdir(parents=True, exist_ok=True)
    log = open(home.parent / "app.log", "wb")
    argv = ["make", "app", f"PORT={port}", *([f"HOST={host}"] if host else [])] if set_up else \
        [str(REPO_ROOT / ".venv/bin/python"), "-m", "ui.serve", "--server.headless", "true", "--server.port", str(port),
         "--server.address", host or "127.0.0.1"]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"make app exited {proc.returncode}: {(home.parent / 'app.log').read_text()[-2000:]}")
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError("the app did not come up")
            time.sleep(0.25)  # s: the health check is cheap; every browser test waits here first
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def model_shown(page, text: str, timeout_s: float = 120) -> None:
    """Wait until the sidebar's Model selectbox shows `text` (as text or as its input's value)."""
    box = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first
    shown, deadline = "", time.time() + timeout_s
    while time.time() < deadline:
        shown = box.evaluate("e => e.innerText + ' ' + [...e.querySelectorAll('input')].map(i => i.value).join(' ')")
        if text in shown:
            return
        time.sleep(0.5)
    raise AssertionError(f"Model selectbox shows {shown!r}, not {text!r}")


def pick_option(scope, label: str, option, timeout_s: float = 300) -> None:
    """Open the selectbox labelled `label` inside `scope` (a page or locator) and click the option named `option`
    (text or regex). A click that lands while the script is still running can focus the box without leaving its
    list open (seen under load right after a reload), so the box is clicked again until the list shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = scope.get_by_role("combobox", name=label).first  # the box itself, not its help icon
    wanted = scope.page if hasattr(scope, "page") else scope
    item = wanted.get_by_role("option", name=option).first  # the list is drawn in a popover outside `scope`
    deadline = time.time() + timeout_s
    while True:
        box.click()
        try:
            item.wait_for(state="visible", timeout=5_000)
            item.click()
            return
        except PlaywrightTimeout:
            if time.time() > deadline:
                raise
            box.press("Escape")
