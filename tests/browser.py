"""Browser-test support: the app as a subprocess, headless Chromium through Playwright, and
small helpers for Gradio components. conftest.py loads it as a plugin, so its fixtures
(``app_url``, ``browser``, ``page``) reach every test module; helpers are imported:

    from browser import expect, launch_app, shot, textbox, combobox, set_number, no_gradio_error

``app_url`` is a module-scoped app with an empty TIMBRE_HOME and the tiny model; for an app on
a prepared home use ``launch_app(home, base_model)`` (a context manager yielding the URL).
Chromium runs with the flags this machine needs (never ``playwright install``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
expect = playwright_api.expect
expect.set_options(timeout=20_000)


# --- fixtures: the app server and the browser ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the app did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def launch_app(home: Path, base_model: Path, extra_args: list[str] | None = None):
    """``python -m webui`` on a free port with TIMBRE_HOME=home; yields its URL, stops it after.
    The app's output goes to ``home/webui-<port>.log``."""
    port = _free_port()
    log = home / f"webui-{port}.log"
    env = dict(os.environ, TIMBRE_HOME=str(home), PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
    argv = [sys.executable, "-m", "webui", "--port", str(port), "--base-model", str(base_model), *(extra_args or [])]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def app_url(tiny_model, tmp_path_factory):
    """The app on a free port, TIMBRE_HOME in a new temporary folder; yields its URL."""
    with launch_app(tmp_path_factory.mktemp("browser-home"), tiny_model) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium); ./start.sh test installs it")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


# --- helpers -----------------------------------------------------------------------------------


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def textbox(page, elem_id: str):
    return page.locator(f"#{elem_id}").get_by_role("textbox")


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id}").get_by_role("spinbutton")
    box.fill(str(value))
    box.press("Enter")


def combobox(page, elem_id: str):
    return page.locator(f"#{elem_id}").get_by_role("combobox")


def no_gradio_error(page) -> None:
    """Fail with the message of a Gradio error toast, if one is shown."""
    toast = page.locator(".toast-body.error")
    if toast.count():
        pytest.fail(f"the app showed an error: {toast.first.inner_text()}")
