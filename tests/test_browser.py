"""A real browser on the app: open it, look at the Models tab, generate, switch tabs, screenshot."""
import re

import pytest
from playwright.sync_api import expect

from conftest import ARTIFACTS
from studio import decoding, models

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_models_tab_describes_and_generates(page, tiny_char_checkpoint):
    expect(page.get_by_text("Train and probe small language models")).to_be_visible(timeout=20000)
    expect(page.get_by_text("parameters").first).to_be_visible(timeout=20000)  # describe ran on load
    picker = page.get_by_label("Model", exact=True).first
    picker.fill(tiny_char_checkpoint)
    picker.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    out = page.get_by_label("Output", exact=True)
    # the model's decoding defaults with the slider's 48 tokens, seeded: exactly the engine's text
    settings = models.default_decoding(tiny_char_checkpoint).with_(max_new_tokens=48)
    generated = decoding.generate(models.load(tiny_char_checkpoint, device="cpu"),
                                  "Human: What is 2 plus 3?\nAssistant:", [settings])[0].text
    expect(out).to_have_value(generated, timeout=30000)
    tabs = page.get_by_role("tab")
    names = [tabs.nth(i).inner_text() for i in range(tabs.count())]
    for name in names:
        page.get_by_role("tab", name=name, exact=True).click()
    page.get_by_role("tab", name="Models", exact=True).click()
    # back on the Models tab after the tour: the chosen model's description and the generated text still show
    expect(page.get_by_role("heading", name=re.compile(rf"^{tiny_char_checkpoint}\s+·\s+[\d.]+M parameters$"))) \
        .to_be_visible()
    expect(out).to_have_value(generated)
    page.screenshot(path=str(ARTIFACTS / "models_tab.png"), full_page=True)


FRAME_COUNTER = """window.__frames = 0;
const frame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => { window.__frames++; return frame(callback); };"""


def test_an_idle_page_draws_few_frames(browser, app_url):
    """Gradio's status tracker leaves a frame loop running (~78 frames a second in headless
    chromium, on every page); the app's page script slows it, so an idle page leaves the CPU to
    a run. The counter is installed before any page script, so it sees what reaches the browser."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.add_init_script(FRAME_COUNTER)
        page.goto(app_url, wait_until="load")
        expect(page.get_by_text("parameters").first).to_be_visible(timeout=20000)
        page.wait_for_timeout(2000)  # the page's own entrance transitions end
        before = page.evaluate("window.__frames")
        page.wait_for_timeout(4000)
        per_s = (page.evaluate("window.__frames") - before) / 4
        assert per_s < 30, f"{per_s:.0f} frames a second on an idle page"
    finally:
        page.close()
