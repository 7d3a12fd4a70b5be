"""A real browser on the app: open it, look at the Models tab, generate, switch tabs, screenshot."""
import pytest
from playwright.sync_api import expect

from conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_models_tab_describes_and_generates(page, tiny_char_checkpoint):
    expect(page.get_by_text("Train and probe small language models")).to_be_visible(timeout=20000)
    expect(page.get_by_text("parameters").first).to_be_visible(timeout=20000)  # describe ran on load
    picker = page.get_by_label("Model", exact=True).first
    picker.fill(tiny_char_checkpoint)
    picker.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    out = page.get_by_label("Output", exact=True)
    expect(out).not_to_have_value("", timeout=30000)
    tabs = page.get_by_role("tab")
    names = [tabs.nth(i).inner_text() for i in range(tabs.count())]
    for name in names:
        page.get_by_role("tab", name=name, exact=True).click()
    page.get_by_role("tab", name="Models", exact=True).click()
    page.screenshot(path=str(ARTIFACTS / "models_tab.png"), full_page=True)
    assert (ARTIFACTS / "models_tab.png").stat().st_size > 10_000
