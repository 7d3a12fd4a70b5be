"""A real browser on the Chat tab: pick the tiny model, send a message, watch the reply stream in."""
import json
import re

import pytest
from playwright.sync_api import expect

from conftest import ARTIFACTS
from studio import chat

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_chat_tab_streams_a_reply(page, tiny_checkpoint):
    page.get_by_role("tab", name="Chat", exact=True).click()
    picker = page.get_by_label("Model", exact=True).filter(visible=True).first
    picker.fill(tiny_checkpoint)  # "tiny" also matches the preset tiny-tale: click the exact option
    page.get_by_role("option", name=tiny_checkpoint, exact=True).click()
    expect(picker).to_have_value(tiny_checkpoint)
    box = page.get_by_role("textbox", name="Message", exact=True)
    box.fill("Hello, who are you?")
    box.press("Enter")
    status = page.get_by_label("Status", exact=True).filter(visible=True)
    expect(status).to_have_value(re.compile(r"\d+ tokens, ended by"), timeout=30000)
    expect(page.get_by_text("Hello, who are you?").first).to_be_visible()
    expect(box).to_have_value("")
    shown = page.locator(".message-row").filter(visible=True)  # the message, then the reply beside it
    expect(shown).to_have_count(2)
    expect(shown.nth(0)).to_have_class(re.compile(r"\buser-row\b"))
    expect(shown.nth(0)).to_contain_text("Hello, who are you?")
    expect(shown.nth(1)).to_have_class(re.compile(r"\bbot-row\b"))
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)
    # rate the reply, save: the thumb lands in the JSONL
    page.get_by_role("button", name="Like", exact=True).first.click()
    page.get_by_role("textbox", name=re.compile("^File")).fill("browser.jsonl")
    page.get_by_role("button", name="Save conversation", exact=True).click()
    expect(page.get_by_label("Saved", exact=True)).to_have_value(re.compile("1 exchange"), timeout=10000)
    rows = chat.load_conversations(chat.chat_file("browser.jsonl"))
    assert rows[0]["rating"] == 1 and rows[0]["model"] == tiny_checkpoint, json.dumps(rows)


def test_arena_streams_two_models_side_by_side(page, tiny_checkpoint, tiny_char_checkpoint):
    page.get_by_role("tab", name="Chat", exact=True).click()
    page.get_by_text("Arena: one message, two models").click()
    for label, name in (("Model A", tiny_checkpoint), ("Model B", tiny_char_checkpoint)):
        picker = page.get_by_label(label, exact=True)
        picker.fill(name)
        block = picker.locator("xpath=ancestor::div[contains(@class, 'block')][1]")  # this picker's options
        block.get_by_role("option", name=name, exact=True).click()
        expect(picker).to_have_value(name)
    box = page.get_by_role("textbox", name="Arena message", exact=True)
    box.fill("hi")  # the char model has a 64-character context
    box.press("Enter")
    status = page.get_by_label("Arena status", exact=True)
    expect(status).to_have_value(re.compile(r"^A: \d+ tokens, ended by .*B: \d+ tokens, ended by"), timeout=30000)
    page.screenshot(path=str(ARTIFACTS / "chat_arena.png"), full_page=True)


def test_stop_ends_a_streaming_reply_and_the_chat_goes_on(page, long_checkpoint):
    page.get_by_role("tab", name="Chat", exact=True).click()
    picker = page.get_by_label("Model", exact=True).filter(visible=True).first
    picker.fill(long_checkpoint)
    page.get_by_role("option", name=long_checkpoint, exact=True).click()
    status = page.get_by_label("Status", exact=True).filter(visible=True)
    # the model's own defaults arrive first (64 new tokens: a 1,024 context allows 512); then ask for more
    expect(status).to_have_value(f"{long_checkpoint}: its own decoding defaults, temperature 1, up to 64 new tokens")
    page.get_by_label("number input for max new tokens").filter(visible=True).first.fill("512")
    page.get_by_role("textbox", name=re.compile("^Stop strings")).fill("")  # only end-of-text or Stop ends it
    box = page.get_by_role("textbox", name="Message", exact=True)
    stop = page.get_by_role("button", name="Stop", exact=True).filter(visible=True).first

    def send_and_stop(text: str) -> int:
        box.fill(text)
        box.press("Enter")
        expect(status).to_have_value(re.compile(r"^\d+ tokens$"), timeout=30000)  # streaming
        stop.click()
        expect(status).to_have_value(re.compile(r"^\d+ tokens, stopped by you$"), timeout=10000)
        shown = status.input_value()
        page.wait_for_timeout(1500)  # nothing streams after Stop
        assert status.input_value() == shown
        return int(shown.split()[0])

    first = send_and_stop("Tell me a long story.")
    assert 0 < first < 512
    # the model is free again: the next message streams (and can be stopped too)
    second = send_and_stop("Another one, please.")
    assert 0 < second < 512
    expect(page.get_by_text("Another one, please.").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "chat_stopped.png"), full_page=True)
