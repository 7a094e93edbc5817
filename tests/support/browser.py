"""Debian's Chromium for browser tests, started headless by Playwright (never downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser from a ``sync_playwright()`` context."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
