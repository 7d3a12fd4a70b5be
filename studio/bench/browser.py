"""Debian's chromium and the flags it runs under, for `bench train-tab` and the browser tests.

Imports nothing heavy: tests/conftest.py reads it in every test session, which must not load
Gradio or playwright unless a browser test runs.
"""
from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
