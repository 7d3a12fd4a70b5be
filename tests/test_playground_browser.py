"""A real browser on the Playground: fill two columns, Generate, watch both stream, screenshot."""
import re
import time

import pytest
from playwright.sync_api import expect

from conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

COUNT_TOKENS = "n => document.querySelectorAll(`#play-out-${n} .tok`).length"
BOTH_FINISHED = "() => [1, 2].every(n => document.querySelector(`#play-out-${n} em.reason`))"


def test_two_columns_stream_side_by_side(page):
    page.get_by_role("tab", name="Playground", exact=True).click()
    page.locator("#play-prompt textarea").fill("The little robot")
    picker = page.get_by_label("Model", exact=True).nth(1)  # the Models tab's picker comes first
    picker.fill("v2")  # context 128, random init: long enough to watch it grow
    picker.press("Enter")
    # column 1 takes v2's own decoding (its preset's); the other columns keep their contrasts
    expect(page.get_by_label("Status", exact=True).filter(visible=True)).to_have_value(
        "v2: its own decoding defaults, temperature 0.8, top-k 200, up to 64 new tokens")
    expect(page.get_by_label("number input for top-k (0 = off)").nth(0)).to_have_value("200")
    expect(page.get_by_label("number input for top-k (0 = off)").nth(1)).to_have_value("50")
    for column, value in ((1, "0.9"), (2, "1.3")):  # fill both columns' temperature
        box = page.get_by_label("number input for temperature (0 = greedy)").nth(column - 1)
        box.fill(value)
        box.press("Enter")
    page.locator("#play-generate").click()
    seen: dict[int, set[int]] = {1: set(), 2: set()}
    deadline = time.time() + 120
    while time.time() < deadline:
        for n in seen:
            seen[n].add(page.evaluate(COUNT_TOKENS, n))
        if page.evaluate(BOTH_FINISHED):
            break
        time.sleep(0.05)
    for n, counts in seen.items():  # each column was seen part-way: it streamed, not arrived at once
        final = max(counts)
        assert final > 5 and any(0 < c < final for c in counts), (n, sorted(counts))
    for n in seen:  # each column shows why it ended and its speed
        expect(page.locator(f"#play-out-{n} em.reason")).to_have_text(re.compile(r"^\((eos|stop|length|context)\)$"))
        expect(page.locator(f"#play-metrics-{n}")).to_contain_text("tok/s")
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
