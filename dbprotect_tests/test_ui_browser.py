"""The Dagster UI after ``dbprotect demo``, read in a real browser as a person reads it.

Headless Chromium from the distribution's packages (``chromium``, ``chromium-driver``; ``.ci/run``
installs them) driven by Selenium. The test runs the demo, starts the demo's webserver with the
printed setup (demo.env, its own DAGSTER_HOME), and asserts on the text on screen: the demo
database's asset group, the snapshot materialized with the demo's backup id, four green checks
(integrity, RPO, retention on the snapshot; schema drift on the production schema), a plot of a
check's metadata, and the restore launchpad opening valid with Launch enabled.

A green UI over an empty instance was issue 13's complaint ("Never materialized", "0 / 5"); every
assertion here names what the demo did, so an instance the demo did not record into fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver; .ci/run does)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BIN = Path(sys.executable).parent
LOCATION = "dbprotect.defs"
#: Seconds to wait for a page to show a text (the webserver answers slowly on a loaded 2-core box).
PAGE_SECONDS = 60
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1200")


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = shlex.split(value)[0] if value else ""
    return values


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """The demo started once (smallest data), not waited for: the browser starts while it runs."""
    workdir = tmp_path_factory.mktemp("ui") / ".dbprotect" / "demo"
    demo = subprocess.Popen([str(BIN / "dbprotect"), "demo", "--dir", str(workdir), "--rows", "1000", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield workdir, demo
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()


@pytest.fixture(scope="module")
def demo_ui(demo_run: tuple[Path, subprocess.Popen[str]], browser: object) -> Iterator[tuple[str, dict]]:
    """The demo's result and its webserver; yields the base URL and the demo's JSON. (It takes the
    browser only so that Chromium starts while the demo runs.)"""
    workdir, demo = demo_run
    try:
        stdout, stderr = demo.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        demo.kill()
        pytest.fail("the demo did not finish within 600 s")
    assert demo.returncode == 0, stderr[-2000:]
    result = json.loads(stdout)
    port = _free_port()
    env = {**os.environ, **_env_file(workdir / "demo.env")}
    web = subprocess.Popen([str(BIN / "dagster-webserver"), "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or web.poll() is not None:
                    pytest.fail("the demo's webserver did not come up")
                time.sleep(1)
        yield base, result
    finally:
        web.terminate()
        try:
            web.wait(30)
        except subprocess.TimeoutExpired:
            web.kill()
        subprocess.run([str(BIN / "dbprotect"), "demo", "--dir", str(workdir), "--stop"], capture_output=True,
                       timeout=120)


@pytest.fixture(scope="module")
def browser(demo_run: tuple[Path, subprocess.Popen[str]]) -> Iterator[object]:
    """Headless Chromium, started after the demo (``demo_run``) so the two start-ups overlap."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="dbprotect-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url: str, *texts: str) -> str:
    """Open ``url`` and wait until the page shows every one of ``texts``; return the page's text."""
    driver.get(url)

    def shown(_driver) -> str | bool:
        body = driver.find_element(By.TAG_NAME, "body").text
        return body if all(text in body for text in texts) else False

    try:
        return WebDriverWait(driver, PAGE_SECONDS, poll_frequency=0.5).until(shown)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"{url} did not show {texts} within {PAGE_SECONDS} s; it shows:\n{body[:3000]}")


def test_demo_ui_shows_the_backup_its_green_checks_a_plot_and_a_ready_restore_form(demo_ui, browser) -> None:
    base, demo = demo_ui
    backup_id = demo["backup"]["backup_id"]

    # Four green checks: integrity, RPO and retention on the snapshot, drift on the production schema.
    group = _open(browser, f"{base}/locations/{LOCATION}/asset-groups/fintech", "production_snapshot",
                  "schema_production", "3 / 5 Passed", "1 / 1 Passed")
    assert "Asset Group" in group and "fintech" in group
    assert "Join the community" not in group  # nux is off in the demo instance

    snapshot = _open(browser, f"{base}/assets/fintech/production_snapshot", "Latest materialization", backup_id,
                     "dump_mb", "rpo_target_hours")
    assert "Never materialized" not in snapshot.split("Latest materialization", 1)[1][:200]
    assert "dump_mb" in snapshot and "rpo_target_hours" in snapshot

    checks = _open(browser, f"{base}/assets/fintech/production_snapshot?view=checks", "backup_integrity_verified",
                   "rpo_met", "retention_compliant", "Plots")
    listed = checks.split("Execute all", 1)[1].split("Execute", 1)[0]
    for name in ("backup_integrity_verified", "rpo_met", "retention_compliant"):
        assert f"{name}\nSucceeded" in listed, listed
    assert listed.count("Succeeded") == 3 and "Failed" not in listed, listed
    # A plot: the check's numeric metadata drawn as a chart (an svg or canvas under "Plots").
    charts = browser.find_elements(By.CSS_SELECTOR, "canvas, svg.recharts-surface")
    assert charts, "no chart element on the checks page"

    form = _open(browser, f"{base}/locations/{LOCATION}/jobs/restore/playground", "database: fintech",
                 "No errors", "Launch Run")
    assert "Missing required config entry" not in form

    def launch_enabled(driver: webdriver.Chrome) -> bool:
        """Launch Run is enabled once the launchpad has validated the form ("No errors" can come first)."""
        buttons = [button for button in driver.find_elements(By.TAG_NAME, "button")
                   if button.text.strip() == "Launch Run"]
        return len(buttons) == 1 and buttons[0].is_enabled()

    assert WebDriverWait(browser, PAGE_SECONDS, poll_frequency=0.5).until(launch_enabled), \
        "the restore launchpad's Launch Run button stayed disabled"
