"""Playwright (sync API) with Debian's Chromium, screenshots and axe-core for the portal tests.

Without Chromium (or axe-core's npm package) the browser tests are skipped on a developer machine
and FAIL under CI (``CI=true``): the acceptance checks must not silently disappear there. A missing
axe-core is installed first with ``npm ci`` from the committed lockfile when npm is available.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("ECARD_SCREENSHOTS", ROOT / "artifacts" / "screenshots"))
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright's sync API keeps an event loop in the test thread; the ORM calls the tests make in
# between page actions are ordinary synchronous code. Set only while the browser is up (the
# `chromium` fixture), so no other test or subprocess inherits it (deploy checks refuse it).
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


def missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (required under CI)")
    pytest.skip(what)


def install_axe() -> None:
    """``npm ci`` of the pinned axe-core (tests/browser/package-lock.json), when npm is there."""
    npm = shutil.which("npm")
    if npm is None:
        return
    subprocess.run(
        [npm, "ci", "--prefix", str(AXE.parents[2]), "--no-audit", "--no-fund", "--ignore-scripts"],
        check=False,
        timeout=300,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        missing("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -r requirements-dev.txt)")
    if not AXE.exists():
        install_axe()
    if not AXE.exists():
        missing(f"axe-core is not installed: npm ci --prefix {AXE.parents[2]}")
    previous = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop(ASYNC_UNSAFE, None)
        else:
            os.environ[ASYNC_UNSAFE] = previous


class Visit:
    """A browser page on the live server that records every response and refuses server errors."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context(viewport=DESKTOP, base_url=base_url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.base_url = base_url
        self.responses: list[tuple[int, str]] = []
        self.page.on("response", lambda r: self.responses.append((r.status, r.url)))

    def goto(self, path: str) -> Any:
        return self.page.goto(path)

    def login(self, username: str, password: str) -> None:
        self.goto("/accounts/login/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_load_state()

    def server_errors(self) -> list[tuple[int, str]]:
        return [(status, url) for status, url in self.responses if status >= 500]

    def shoot(self, name: str) -> None:
        """Full-page screenshots at desktop and phone widths: ``<name>-desktop.png``, ``<name>-phone.png``."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            self.page.set_viewport_size(size)
            self.page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
        self.page.set_viewport_size(DESKTOP)

    def axe(self) -> list[dict[str, Any]]:
        """Serious and critical axe-core violations of the current page (WCAG 2.x A/AA rules)."""
        if not self.page.evaluate("() => typeof window.axe !== 'undefined'"):
            self.page.add_script_tag(path=str(AXE))
        result = self.page.evaluate(
            """async () => {
                const tags = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'];
                const r = await axe.run(document, {runOnly: {type: 'tag', values: tags}});
                return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                              nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
            }"""
        )
        return [v for v in result if v["impact"] in ("serious", "critical")]

    def check(self, name: str) -> None:
        """Screenshot the page at both widths and assert axe finds nothing serious or critical."""
        self.shoot(name)
        for size in (DESKTOP, PHONE):
            self.page.set_viewport_size(size)
            violations = self.axe()
            assert not violations, (name, size, violations)
        self.page.set_viewport_size(DESKTOP)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(chromium: Any, live_server: Any) -> Iterator[Any]:
    opened: list[Visit] = []

    def open_() -> Visit:
        v = Visit(chromium, live_server.url)
        opened.append(v)
        return v

    yield open_
    errors = [e for v in opened for e in v.server_errors()]
    for v in opened:
        v.close()
    assert not errors, f"server errors: {errors}"
