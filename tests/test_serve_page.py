"""The chat page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): send a
message, see the streamed reply and its drift-meter value, toggle the cap, no console errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from persona_axis.serve.app import create_app
from persona_axis.serve.runner import background_server
from support.browser import CHROMIUM, launch_chromium
from support.bundles import CAP, serving_bundle
from support.tiny_models import tiny_lm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    lm = tiny_lm("llama")
    app = create_app(lm, serving_bundle(lm), default_cap=CAP, max_tokens_limit=32)
    with background_server(app) as base:
        yield base


def first_level(base: str) -> str:
    """The drift level the server gives the page's first reply (same request, not streamed)."""
    body = {
        "messages": [{"role": "user", "content": "Hello, who are you?"}],
        "max_tokens": 8,
        "persona_axis": {"cap": CAP},
    }
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).json()
    return str(response["persona_axis"]["drift_reading"]["level"])


def test_chat_page_shows_the_reply_and_its_meter(page_url: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type in {"error", "warning"} else None,
            )
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("requestfailed", lambda req: problems.append(f"failed: {req.url}"))
            page.goto(page_url)
            expect = sync_api.expect
            expect(page.locator("#model-name")).to_have_text("tiny-llama")
            expect(page.locator("#cap-toggle")).to_be_checked()
            expect(page.locator("#cap-setting")).to_have_value(CAP)

            page.fill("#max-tokens", "8")
            page.fill("#input", "Hello, who are you?")
            page.click("#send")
            reply = page.locator(".msg.assistant").first
            meter = reply.locator("[data-testid=meter-value]")
            expect(meter).to_be_visible(timeout=30_000)
            assert re.search(r"layer 2: before -?\d+\.\d\d → after -?\d+\.\d\d", meter.inner_text())
            assert f"cap {CAP}" in meter.inner_text()
            assert reply.locator(".mark.before").count() == 1
            level = reply.locator("[data-testid=drift-level]").inner_text()
            assert level == first_level(page_url)  # the server's rule, as a client reads it
            expect(page.locator("[data-testid=live-meter]")).to_contain_text("turn 1")

            page.uncheck("#cap-toggle")  # second turn without the cap
            page.fill("#input", "And now?")
            page.click("#send")
            second = page.locator(".msg.assistant").nth(1)
            expect(second.locator("[data-testid=meter-value]")).to_contain_text("no cap")
            expect(page.locator("[data-testid=live-meter]")).to_contain_text("turn 2")
            assert page.locator("#chart circle").count() == 4  # before and after, two turns
            assert page.locator(".msg.error").count() == 0

            compare_and_gate(page, sync_api.expect)
        finally:
            browser.close()
    assert not problems, problems


def compare_and_gate(page: Any, expect: Any) -> None:
    """Answer a message with and without the cap side by side, then one with the on-drift cap."""
    page.check("#compare")  # the same message with and without the cap, side by side
    page.fill("#input", "Compare, please.")
    page.click("#send")
    capped = page.locator("[data-testid=compare-capped]")
    uncapped = page.locator("[data-testid=compare-uncapped]")
    expect(uncapped.locator("[data-testid=meter-value]")).to_contain_text("no cap")
    expect(capped.locator("[data-testid=meter-value]")).to_contain_text(f"cap {CAP}")
    assert re.search(r"before -?\d+\.\d\d", uncapped.inner_text())
    expect(page.locator("[data-testid=live-meter]")).to_contain_text("turn 3")

    page.uncheck("#compare")
    page.check("#cap-toggle")
    page.select_option("#cap-setting", "on-drift")
    page.fill("#input", "Once more.")
    page.click("#send")
    last = page.locator(".msg.assistant").last
    expect(last.locator("[data-testid=meter-value]")).to_contain_text("on-drift")
