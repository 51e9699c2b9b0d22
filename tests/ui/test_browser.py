"""The web UI in a real browser: headless Chromium (Debian's) driven by Playwright.

One walk through the app against the real server and real training subprocesses: fill the
New-run form with a tiny model and 6 steps, launch (a double click: one run), watch the step
counter and the loss curve advance; stop a longer run (SIGTERM: a checkpoint) and resume it;
open the finished run; chat with it (a streamed answer beside the base's); compare the two
runs; preview the data and export. Screenshots of each page (1280x800) go to
``$TUNESMITH_UI_SHOTS`` or the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.ui.conftest import TINY_RUN

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny-e2e")]


def _browser_or_skip():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("TUNESMITH_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing and TUNESMITH_REQUIRE_BROWSER is set")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; `make test` does it)")
    return playwright


@pytest.fixture
def page(tmp_path):
    sync_api = _browser_or_skip()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.set_default_timeout(60_000)
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        yield pg
        browser.close()
        assert not errors, errors


@pytest.fixture
def shots(tmp_path):
    out = Path(os.environ.get("TUNESMITH_UI_SHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _fill(page, values: dict) -> None:
    page.click("details.more summary")
    for key, value in values.items():
        page.fill(f"[name='{key}']", ",".join(value) if isinstance(value, list) else value)


def _run_name(page) -> str:
    page.wait_for_url("**/#/run/**")
    return page.url.split("#/run/")[1].replace("%2F", "/")


def test_launch_watch_stop_resume_chat_compare(page, server, workspace, shots):
    page.goto(server + "/#/new")
    page.wait_for_selector("#plan .badge")
    # Inline validation: exactly the CLI's message, under the field.
    page.fill("[name='rank']", "0")
    err = page.locator("[data-field='rank'] .err")
    err.wait_for(state="visible")
    page.wait_for_function("document.querySelector(\"[data-field='rank'] .err\")?.textContent")
    assert err.text_content() == (
        "config 'rank': 0 is not allowed; expected greater than or equal to 1"
    )
    page.fill("[name='rank']", "")
    _fill(page, {**TINY_RUN, "max-steps": "6", "output": "runs/first"})
    page.wait_for_selector("#plan[data-model='models/tiny'] .badge.fits")
    assert not err.text_content()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=shots / "new-run.png")

    page.dblclick("#launch")  # one run per click, a double click included
    assert _run_name(page) == "runs/first"
    page.wait_for_function("document.querySelector('#step')?.textContent === '6'", timeout=120_000)
    page.wait_for_selector("#charts[data-points='6']")
    page.wait_for_selector("#state .badge.finished", timeout=120_000)
    page.wait_for_selector("#eval table")
    page.screenshot(path=shots / "run.png")
    assert sorted(p.name for p in (workspace / "runs").iterdir()) == ["first"]

    # Stop (SIGTERM: a checkpoint at the next step) and Resume a longer run.
    page.goto(server + "/#/new")
    page.wait_for_selector("#plan .badge")
    _fill(page, {**TINY_RUN, "max-steps": "120", "output": "runs/second"})
    page.check("[name='skip-base-eval']")
    page.wait_for_selector("#plan[data-model='models/tiny'] .badge.fits")
    page.click("#launch")
    assert _run_name(page) == "runs/second"
    page.wait_for_function("Number(document.querySelector('#step')?.textContent) >= 1")
    page.click("#stop")
    page.wait_for_selector("#state .badge.interrupted", timeout=120_000)
    stopped = int(page.text_content("#step"))
    assert 1 <= stopped < 120
    assert (workspace / "runs/second/checkpoints" / f"step-{stopped}").is_dir()
    page.click("#resume")
    page.wait_for_selector("#state .badge.finished", timeout=180_000)
    assert page.text_content("#step") == "120"

    # The finished run, and chat with it beside its base.
    page.goto(server + "/#/run/runs%2Ffirst")
    page.wait_for_selector("#eval table")
    page.goto(server + "/#/chat/runs%2Ffirst")
    page.wait_for_selector("#chat-status:text('ready')", timeout=120_000)
    page.fill("#prompt", "How many patients live in Lyon?")
    page.fill("#max-tokens", "8")
    page.click("#send")
    page.wait_for_selector("#answer-run[data-done='1']")
    page.wait_for_selector("#answer-base[data-done='1']")
    assert page.text_content("#answer-run").strip()
    page.screenshot(path=shots / "chat.png")

    page.goto(server + "/#/compare")
    page.wait_for_selector("#compare-out table")
    assert page.locator("#compare-out tbody tr").count() >= 2
    page.screenshot(path=shots / "compare.png")

    page.goto(server + "/#/runs")
    page.wait_for_selector("table .badge.finished")
    page.screenshot(path=shots / "runs.png")

    page.goto(server + "/#/data")
    page.select_option("#data-file", "data/train.jsonl")
    page.fill("#preview-model", "models/tiny")
    page.click("#preview")
    page.wait_for_selector("#preview-out .tokens .t")
    page.screenshot(path=shots / "data.png")

    page.goto(server + "/#/run/runs%2Ffirst")
    page.click("#export")
    page.wait_for_selector("#export-result .notice", timeout=300_000)
    assert page.text_content("#export-result .notice") == "verified: runs/first-merged"
    page.screenshot(path=shots / "export.png", full_page=True)
    if os.environ.get("TUNESMITH_UI_README_SHOT"):
        shutil.copy(shots / "run.png", os.environ["TUNESMITH_UI_README_SHOT"])
