"""A new user's first ten minutes, clicked through in chromium: the lesson, a chat with what it
trained, a rated and saved answer, a fine-tune on that chat, and both models in the arena.

The lesson is shortened through `STUDIO_LESSON_MAX_STEPS` (the full one takes ~4 minutes on 2
cores), so its model is not trained well enough to answer "9": here the chat must show the
model's own reply, in words and without an Error badge, with the run's own decoding defaults.
That those defaults let the lesson's first question in at all (35 of 64 characters, 16 left for
the reply) is `test_chat.py::test_the_lessons_first_question_fits_a_lesson_run_with_its_own_decoding_defaults`.
"""
import re

import pytest
from playwright.sync_api import expect

from conftest import ARTIFACTS
from studio import chat, models
from studio.presets import get_preset
from studio.ui.common import decoding_summary
from studio.ui.train import LESSON_MAX_STEPS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QUESTION = "What is 4 plus 5?"
ANSWERED = re.compile(r"^\d+ tokens, ended by [a-z -]+$")  # a whole reply, nothing left out or cropped


def pick(page, label: str, name: str, nth: int = 0) -> None:
    """Choose `name` in the visible model picker `label` as a user does: type, click the option."""
    picker = page.get_by_label(label, exact=True).filter(visible=True).nth(nth)
    picker.fill(name)
    block = picker.locator("xpath=ancestor::div[contains(@class, 'block')][1]")  # this picker's options
    block.get_by_role("option", name=name, exact=True).click()
    expect(picker).to_have_value(name)


def no_error_badges(page) -> None:
    """No component shows Gradio's bare "Error" mark (the toast, outside the components, may)."""
    expect(page.locator(".block").get_by_text("Error", exact=True).filter(visible=True)).to_have_count(0)


def test_lesson_chat_rate_save_fine_tune_and_arena(page, monkeypatch):
    monkeypatch.setenv(LESSON_MAX_STEPS, "10")
    # 1. the lesson, from its button, to its before/after report
    page.get_by_role("tab", name="Train", exact=True).click()
    page.get_by_role("button", name="Start the lesson", exact=True).click()
    heading = page.get_by_role("heading", name=re.compile(r"^Before and after: lesson-\d{8}-\d{6}$"))
    expect(heading).to_be_visible(timeout=240_000)
    run = heading.inner_text().removeprefix("Before and after: ")
    expect(page.get_by_text(re.compile(r"^10 steps in \d+ s\. Held-out exact match"))).to_be_visible()
    expect(page.get_by_label("held-out questions, answered before and after training")).to_be_visible()

    # 2. the Chat tab: the run brings its own decoding (greedy, 16 new tokens), and the question fits
    page.get_by_role("tab", name="Chat", exact=True).click()
    pick(page, "Model", run)
    status = page.get_by_label("Status", exact=True).filter(visible=True)
    own = models.default_decoding(run)  # the lesson preset's: greedy, 16 new tokens
    expect(status).to_have_value(f"{run}: its own decoding defaults, {decoding_summary(own)}")
    expect(page.get_by_label("number input for max new tokens").filter(visible=True).first).to_have_value(
        str(own.max_new_tokens))
    box = page.get_by_role("textbox", name="Message", exact=True)
    box.fill(QUESTION)
    box.press("Enter")
    expect(status).to_have_value(ANSWERED, timeout=30_000)
    shown = page.locator(".message-row").filter(visible=True)
    expect(shown).to_have_count(2)
    expect(shown.nth(0)).to_contain_text(QUESTION)
    expect(shown.nth(1)).to_have_class(re.compile(r"\bbot-row\b"))
    expect(box).to_have_value("")
    no_error_badges(page)

    # 3. rate the reply, save the conversation
    page.get_by_role("button", name="Like", exact=True).first.click()
    page.get_by_role("textbox", name=re.compile("^File")).fill("journey.jsonl")
    page.get_by_role("button", name="Save conversation", exact=True).click()
    expect(page.get_by_label("Saved", exact=True)).to_have_value(re.compile(r"^1 exchange\(s\) of conversation"))
    rows = chat.load_conversations(chat.chat_file("journey.jsonl"))
    assert [(r["user"], r["rating"], r["model"]) for r in rows] == [(QUESTION, 1, run)]

    # 4. fine-tune the lesson run on that chat for a few steps
    page.get_by_role("tab", name="Train", exact=True).click()
    pick(page, "Model to train", run)
    steps = page.get_by_label("max steps", exact=True)
    # the run's own training defaults (its preset's) arrived: now change them
    expect(steps).to_have_value(str(get_preset("lesson").train.max_steps))
    steps.fill("5")
    page.get_by_label("saved chat", exact=True).check()
    saved_chat = page.get_by_label("Saved chat", exact=True)
    saved_chat.fill("journey.jsonl")
    saved_chat.press("Enter")
    page.get_by_label("Run name", exact=True).fill("journey-tuned")
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.get_by_text(re.compile(r"^journey-tuned · done · step 5/5"))).to_be_visible(timeout=180_000)
    expect(page.get_by_label("Status", exact=True).filter(visible=True)).to_have_value("")
    no_error_badges(page)

    # 5. both models in the arena, each at its own defaults
    page.get_by_role("tab", name="Chat", exact=True).click()
    page.get_by_text("Arena: one message, two models").click()
    pick(page, "Model A", run)
    pick(page, "Model B", "journey-tuned")
    expect(page.get_by_label("each model's own defaults", exact=True)).to_be_checked()
    arena_box = page.get_by_role("textbox", name="Arena message", exact=True)
    arena_box.fill(QUESTION)
    arena_box.press("Enter")
    arena_status = page.get_by_label("Arena status", exact=True)
    expect(arena_status).to_have_value(re.compile(r"^A: \d+ tokens, ended by [a-z -]+  \|  B: \d+ tokens, ended by"),
                                       timeout=30_000)
    for side in ("a", "b"):
        replies = page.locator(f"#arena-{side} .message-row")
        expect(replies).to_have_count(2)
        expect(replies.nth(0)).to_contain_text(QUESTION)
        expect(replies.nth(1)).to_have_class(re.compile(r"\bbot-row\b"))
    no_error_badges(page)
    page.screenshot(path=str(ARTIFACTS / "journey.png"), full_page=True)


def test_an_error_stays_on_the_status_line_and_the_boxes_keep_what_they_had(page):
    """A refused action says why on its tab's status line, in words, until the next action; the
    chat and the message box are left as they were, not replaced by "Error" badges."""
    page.get_by_role("tab", name="Chat", exact=True).click()
    picker = page.get_by_label("Model", exact=True).filter(visible=True).first
    picker.fill("nope")
    picker.press("Tab")  # a typed name, no such model
    box = page.get_by_role("textbox", name="Message", exact=True)
    box.fill("hello")
    box.press("Enter")
    status = page.get_by_label("Status", exact=True).filter(visible=True)
    expect(status).to_have_value(re.compile(r"^Error: model 'nope' not found: expected a preset"))
    page.wait_for_timeout(11_000)  # longer than the toast's 10 s: the line still says it
    expect(status).to_have_value(re.compile(r"^Error: model 'nope' not found"))
    expect(box).to_have_value("hello")
    expect(page.locator(".message-row").filter(visible=True)).to_have_count(0)
    no_error_badges(page)
    # the next action replaces it: the tab's own model answers
    picker.fill("tiny-tale")
    page.get_by_role("option", name="tiny-tale", exact=True).click()
    expect(status).to_have_value(re.compile(r"^tiny-tale: its own decoding defaults, temperature 0.8, top-p 0.9"))
    # another tab, its own line
    page.get_by_role("tab", name="Playground", exact=True).click()
    page.get_by_text("Sweep one setting").click()
    # the section is drawn when it opens, its plot last: text typed before that can be put back to
    # the box's first value when the plot arrives (seen 1 in 6 to 1 in 16 tries; none in 40 after it)
    expect(page.get_by_text("Metrics vs value", exact=True)).to_be_visible()
    page.get_by_label("Values (comma separated)", exact=True).fill("0.2, warm")
    page.get_by_role("button", name="Sweep", exact=True).click()
    play_status = page.get_by_label("Status", exact=True).filter(visible=True)
    expect(play_status).to_have_value("Error: sweep values must be numbers separated by commas, got '0.2, warm'")
    no_error_badges(page)
