"""The Train tab over HTTP and in a browser: start, watch, stop, load the checkpoint."""
import html
import re

import pytest
from gradio_client import Client
from playwright.sync_api import expect

from conftest import ARTIFACTS, wait_for
from studio import models, runs
from studio.presets import get_preset

pytestmark = pytest.mark.slow

# model, data kind, file, saved chat, hub name, run name, device, precision, then the tab's settings in order:
# learning_rate, warmup_steps, max_steps, batch_size, grad_accum, eval_interval, save_interval, patience,
# then the run options: validation split mode, report_to, eval file, LoRA rank (0 = off), alpha, dropout, targets,
# compile
SETTINGS = [1e-3, 2, 2000, 4, 1, 10, 10, 0, "documents", "none", None, 0, 16.0, 0.0, "", "off"]


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_client_starts_reads_stops_and_the_checkpoint_loads(client, tiny_checkpoint):
    client.predict(tiny_checkpoint, "built-in corpus", None, None, "", "tab-run", "cpu", "auto", *SETTINGS,
                   api_name="/train_start")
    # the step-0 eval (the untrained model's score) comes first: wait for a step row and a later eval
    status = wait_for(lambda: (s := client.predict("tab-run", api_name="/train_status")).get("last_step")
                      and s.get("last_eval", {}).get("step", 0) > 0 and s)
    assert status["state"] == "running" and status["max_steps"] == 2000
    assert status["last_step"]["loss"] > 0 and status["last_eval"]["val_ppl"] > 1
    # a second start while one runs is refused with a clear message
    with pytest.raises(Exception, match="already going"):
        client.predict(tiny_checkpoint, "built-in corpus", None, None, "", "tab-run-2", "cpu", "auto", *SETTINGS,
                       api_name="/train_start")
    client.predict(api_name="/train_stop")
    final = wait_for(lambda: (s := client.predict("tab-run", api_name="/train_status"))["state"]
                     in ("stopped", "done", "failed") and s)
    assert final["state"] == "stopped", final
    assert runs.read_run(runs.run_dir("tab-run"))["status"] == "stopped"
    loaded = models.load("tab-run", device="cpu")
    assert loaded.spec.path.parent == runs.run_dir("tab-run")
    assert "tab-run" in models.list_models()


def test_a_saved_chat_is_training_data(client, tiny_checkpoint):
    """collect -> fine-tune: the Chat tab's file is a data choice of its own in the Train tab."""
    from studio import chat

    history = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"},
               {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]
    chat.save_conversation(history, {3: -1}, path=chat.chat_file("collected.jsonl"))
    assert "collected.jsonl" in chat.saved_chat_files()
    plan = client.predict(tiny_checkpoint, "saved chat", None, "collected.jsonl", "", "cpu", "auto", *SETTINGS,
                          api_name="/train_plan")
    assert "from 1 documents (1 rated-down replies left out)" in plan, plan
    with pytest.raises(Exception, match="saved chat"):
        client.predict(tiny_checkpoint, "saved chat", None, None, "", "cpu", "auto", *SETTINGS, api_name="/train_plan")


def test_a_run_that_fails_at_setup_says_why(client, tiny_checkpoint, tmp_path):
    """Not "failed · step 0/0": the reason is in /train_status, run.json, the status line and the events."""
    from gradio_client import handle_file

    from studio import jobs
    from studio.ui.train import _progress_html, events_table

    (tmp_path / "empty.txt").write_text("")  # found only when the run reads it
    client.predict(tiny_checkpoint, "file", handle_file(str(tmp_path / "empty.txt")), None, "", "fails-early", "cpu",
                   "auto", *SETTINGS, api_name="/train_start")
    status = wait_for(lambda: (s := client.predict("fails-early", api_name="/train_status"))["state"] == "failed" and s)
    reason = "no usable documents"
    assert reason in status["error"] and status["max_steps"] == 2000
    run = runs.read_run(runs.run_dir("fails-early"))
    assert run["status"] == "failed" and reason in run["error"]
    df = runs.read_metrics(runs.run_dir("fails-early"))
    shown = _progress_html(jobs.run_progress(jobs.TrainingJob(), runs.run_dir("fails-early"), df))
    assert "<b>failed</b> · step 0/2000" in shown and html.escape(reason) in shown
    assert events_table(df).iloc[0].kind == "failed" and reason in events_table(df).iloc[0].message
    # a run that never started leaves its name free
    client.predict(tiny_checkpoint, "built-in corpus", None, None, "", "fails-early", "cpu", "auto", *SETTINGS,
                   api_name="/train_start")
    assert client.predict("fails-early", api_name="/train_status")["state"] in ("starting", "running")
    client.predict(api_name="/train_stop")
    final = wait_for(lambda: (s := client.predict("fails-early", api_name="/train_status"))["state"]
                     in ("stopped", "done", "failed") and s)
    assert final["state"] == "stopped" and "error" not in final, final


@pytest.mark.browser
def test_browser_starts_a_run_sees_the_loss_chart_and_stops(page, browser, app_url, tiny_checkpoint):
    page.get_by_role("tab", name="Train", exact=True).click()
    picker = page.get_by_label("Model to train", exact=True)
    picker.fill(tiny_checkpoint)
    page.get_by_role("option", name=tiny_checkpoint, exact=True).click()
    expect(picker).to_have_value(tiny_checkpoint)
    page.get_by_label("Run name", exact=True).fill("browser-run")
    max_steps = page.get_by_label("max steps", exact=True)
    max_steps.fill("2000")
    page.get_by_label("eval interval", exact=True).fill("10")
    page.get_by_label("batch size", exact=True).fill("4")
    page.get_by_role("button", name="Start", exact=True).click()
    # the loss chart gets a drawn line once the run has logged steps
    loss_line = page.locator(".js-plotly-plot").first.locator(".scatterlayer .trace path.js-line")
    expect(loss_line.first).to_be_visible(timeout=90_000)
    expect(page.get_by_text("browser-run").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "train_tab.png"), full_page=True)
    # a second tab and a reloaded page show the same run, live; neither stops nor duplicates it
    step_of = re.compile(r"browser-run · running · step (\d+)/2000")
    second = browser.new_page()
    try:
        second.goto(app_url, wait_until="load")
        second.get_by_role("tab", name="Train", exact=True).click()
        expect(second.get_by_text(step_of).first).to_be_visible(timeout=30_000)
    finally:
        second.close()
    page.reload(wait_until="load")
    page.get_by_role("tab", name="Train", exact=True).click()
    shown = page.get_by_text(step_of).first
    expect(shown).to_be_visible(timeout=30_000)
    first_step = int(step_of.search(shown.inner_text()).group(1))
    expect(shown).not_to_have_text(re.compile(rf"step {first_step}/"), timeout=30_000)  # still training
    assert [r for r in runs.list_runs()["name"] if r.startswith("browser-run")] == ["browser-run"]
    page.get_by_role("button", name="Stop", exact=True).click()
    try:
        expect(page.get_by_text("browser-run · stopped").first).to_be_visible(timeout=60_000)
    finally:
        page.screenshot(path=str(ARTIFACTS / "train_tab_stopped.png"), full_page=True)
    assert runs.read_run(runs.run_dir("browser-run"))["status"] == "stopped"


def test_the_lesson_is_an_endpoint_that_takes_nothing(client):
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/lesson_start"]
    assert endpoint["parameters"] == []  # the lesson's settings are its preset's, nothing to choose


@pytest.mark.browser
def test_browser_the_lesson_comes_first_and_is_the_default(page):
    page.get_by_role("tab", name="Train", exact=True).click()
    expect(page.get_by_role("button", name="Start the lesson", exact=True)).to_be_visible()
    expect(page.get_by_text("New here? Start with the lesson.")).to_be_visible()
    expect(page.get_by_label("Model to train", exact=True)).to_have_value("lesson")
    expect(page.get_by_label("built-in corpus", exact=True)).to_be_checked()
    lesson_steps = str(get_preset("lesson").train.max_steps)  # the lesson preset's settings
    expect(page.get_by_label("max steps", exact=True)).to_have_value(lesson_steps)
