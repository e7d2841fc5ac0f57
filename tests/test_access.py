"""Who can use Iris (#28): local by default, a password when shared, folders and hub pushes confined."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import access
from core.errors import IrisError
from core.paths import REPO_ROOT, check_folder, iris_home

PASSWORD = "correct horse battery"


# ---------------------------------------------------------------- make app: where it listens

def listening_ips(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


@pytest.mark.slow
def test_make_app_listens_on_loopback_only_by_default(embedded_model_dir, session_home, monkeypatch):
    from tests.e2e_harness import running_app

    monkeypatch.delenv("IRIS_PASSWORD", raising=False)
    with running_app(session_home, timeout_s=300) as url:
        port = int(url.rsplit(":", 1)[1])
        assert listening_ips(port) == {"127.0.0.1"}


def test_sharing_without_a_password_is_refused_in_one_sentence(monkeypatch):
    monkeypatch.delenv("IRIS_PASSWORD", raising=False)
    out = subprocess.run([sys.executable, "-m", "core.access", "check-host", "0.0.0.0"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: refusing to listen on 0.0.0.0 without a password: set IRIS_PASSWORD")
    assert out.stderr.count("\n") == 1
    for host in ("127.0.0.1", "localhost", "::1"):
        access.require_password_for(host)  # loopback needs none
    monkeypatch.setenv("IRIS_PASSWORD", PASSWORD)
    access.require_password_for("0.0.0.0")


@pytest.mark.slow
def test_make_app_host_0000_without_password_does_not_start(monkeypatch, tmp_path):
    from tests.e2e_harness import free_port

    env = {k: v for k, v in os.environ.items() if k != "IRIS_PASSWORD"}
    port = free_port()
    out = subprocess.run(["make", "app", "HOST=0.0.0.0", f"PORT={port}"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300, env={**env, "IRIS_HOME": str(tmp_path / "home")})
    assert out.returncode != 0
    assert "error: refusing to listen on 0.0.0.0 without a password" in out.stderr
    assert not listening_ips(port) and "streamlit run" not in out.stdout


def test_a_hashed_password_in_the_workspace_counts_and_is_not_stored_in_clear(monkeypatch):
    monkeypatch.delenv("IRIS_PASSWORD", raising=False)
    assert not access.password_required()
    access.save_password(PASSWORD)
    text = (iris_home() / access.ACCESS_FILE).read_text()
    assert PASSWORD not in text and text.startswith("password_hash: scrypt$")
    assert access.password_required() and access.check_password(PASSWORD)
    assert not access.check_password(PASSWORD + "x") and not access.check_password("")
    access.require_password_for("0.0.0.0")
    with pytest.raises(IrisError, match="fewer than 8"):
        access.save_password("short")


# ---------------------------------------------------------------- the gate

def test_gate_asks_once_per_session_and_waits_after_a_wrong_password(monkeypatch):
    monkeypatch.setenv("IRIS_PASSWORD", PASSWORD)
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Password"] and not at.get("tabs")
    at.text_input[0].set_value("guess")
    started = time.monotonic()
    at.button[0].click().run()
    assert time.monotonic() - started >= 1.0
    assert [e.value for e in at.error] == ["That password is not right: try again."]
    assert PASSWORD not in str(at.error[0].value)
    at.text_input[0].set_value(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert "Password" not in [t.label for t in at.text_input]  # the Home page now, no gate
    at.run()
    assert "Password" not in [t.label for t in at.text_input]  # once per session
    fresh = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    assert [t.label for t in fresh.text_input] == ["Password"]  # another browser session asks again


@pytest.mark.slow
def test_shared_app_in_chromium_shows_only_the_gate_until_the_password(embedded_model_dir, session_home):
    from playwright.sync_api import sync_playwright

    from tests.e2e_harness import CHROMIUM, CHROMIUM_ARGS, running_app

    with running_app(session_home, timeout_s=300, host="0.0.0.0", env={"IRIS_PASSWORD": PASSWORD}) as url, \
            sync_playwright() as p:
        assert listening_ips(int(url.rsplit(":", 1)[1])) == {"0.0.0.0"}
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            for path in ("/", "/export", "/train"):  # no page is reachable around the gate
                page.goto(url + path)
                page.get_by_label("Password", exact=True).wait_for()
                assert page.get_by_role("link", name="Export").count() == 0
                assert page.get_by_role("heading", name="Export").count() == 0
            page.goto(url)  # (the unknown paths also raised Streamlit's "page not found" dialog)
            page.get_by_label("Password", exact=True).fill("wrong")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_text("That password is not right").wait_for()
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("link", name="Export").first.wait_for()
            assert PASSWORD not in page.url
            page.get_by_role("link", name="Export").first.click()
            page.get_by_role("heading", name="Export").first.wait_for()
        finally:
            browser.close()
    log = (session_home.parent / "app.log").read_text()
    assert PASSWORD not in log and "wrong" not in log


# ---------------------------------------------------------------- folders typed into pages

@pytest.fixture
def outside_link(tmp_path) -> Path:
    """A symlink inside IRIS_HOME that leads outside it."""
    link = iris_home() / "models" / "sneaky"
    link.symlink_to(tmp_path, target_is_directory=True)
    return link


BAD_FOLDERS = ["/etc", "../..", "models/sneaky", "/tmp/../etc/ssl", "ok\x00"]


@pytest.mark.parametrize("folder", BAD_FOLDERS)
def test_check_folder_refuses_what_leads_outside(folder, outside_link):
    with pytest.raises(IrisError, match="outside the folders this app may use|not a usable path") as info:
        check_folder(folder, "Model folder")
    assert str(iris_home()) in str(info.value)
    if folder == "models/sneaky":
        assert "through a symlink" in str(info.value)


def test_check_folder_allows_the_workspace_and_listed_roots(tmp_path, monkeypatch):
    inside = iris_home() / "models" / "mine"
    inside.mkdir()
    assert check_folder(str(inside), "Model folder") == inside
    assert check_folder("models/mine", "Model folder") == inside
    extra = tmp_path / "drive"
    extra.mkdir()
    with pytest.raises(IrisError, match="IRIS_ALLOWED_DIRS"):
        check_folder(str(extra / "ckpts"), "Mirror folder")
    monkeypatch.setenv("IRIS_ALLOWED_DIRS", f"/nonexistent{os.pathsep}{extra}")
    assert check_folder(str(extra / "ckpts"), "Mirror folder") == extra / "ckpts"


@pytest.mark.parametrize("folder", BAD_FOLDERS[:3])
def test_export_page_model_folder_refuses_outside_paths(folder, outside_link):
    at = AppTest.from_file("../pages/export.py", default_timeout=120).run()
    at.radio[0].set_value("a model folder").run()
    at.text_input[0].set_value(folder).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(f"Model folder {folder!r} is ")
    assert "outside the folders this app may use" in errors[0]


@pytest.mark.parametrize("folder", BAD_FOLDERS[:3])
def test_train_page_mirror_folder_refuses_outside_paths(folder, outside_link):
    at = AppTest.from_file("../pages/train.py", default_timeout=120).run()
    box = next(t for t in at.text_input if t.label.startswith("Mirror checkpoints"))
    box.set_value(folder).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith(f"Mirror checkpoints to folder {folder!r} is outside") for e in errors), errors


# ---------------------------------------------------------------- hub pushes

def test_a_push_to_another_namespace_is_refused_without_showing_the_token(tmp_path, monkeypatch):
    from core.export.config import ExportConfig
    from core.export.gguf import push

    token = "hf_secretTOKEN1234567890"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("IRIS_HUB_NAMESPACES", "ana,lab-team")
    with pytest.raises(IrisError, match="`push_repo` 'mallory/x' is outside the hub namespaces .*: ana, lab-team"):
        ExportConfig(source="r", push_repo="mallory/x")
    assert ExportConfig(source="r", push_repo="lab-team/x").push_repo == "lab-team/x"
    result = push(tmp_path, "mallory/x", [])
    assert result["ok"] is False and "outside the hub namespaces" in result["error"]
    assert token not in str(result)
    monkeypatch.delenv("IRIS_HUB_NAMESPACES")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the token's user cannot be confirmed offline: nothing allowed
    with pytest.raises(IrisError, match="none \\(set IRIS_HUB_NAMESPACES"):
        access.check_hub_repo("ana/x")


def test_export_page_asks_to_confirm_a_push_and_refuses_another_namespace(monkeypatch):
    monkeypatch.setenv("IRIS_HUB_NAMESPACES", "ana")
    monkeypatch.setenv("IRIS_ALLOWED_DIRS", "/")
    at = AppTest.from_file("../pages/export.py", default_timeout=120).run()
    at.radio[0].set_value("a model folder").run()
    at.text_input[0].set_value(str(REPO_ROOT)).run()
    repo_box = next(t for t in at.text_input if t.label.startswith("Push to hub repo"))
    repo_box.set_value("mallory/models").run()
    assert any("`push_repo` 'mallory/models' is outside the hub namespaces" in e.value for e in at.error)
    repo_box.set_value("ana/models").run()
    assert [c.label for c in at.checkbox][-1] == "Yes, upload the GGUFs to ana/models on the hub"
