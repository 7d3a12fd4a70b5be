"""The Train tab's Sweep section over HTTP and in a browser: start a 2-trial sweep, see both rows and curves."""
import re

import pytest
from gradio_client import Client
from playwright.sync_api import expect

from conftest import ARTIFACTS, wait_for
from studio import runs, sweep

pytestmark = pytest.mark.slow

# model, data kind, file, saved chat, hub name, run name, device, precision, then the Train tab's settings
# (learning_rate, warmup_steps, max_steps, batch_size, grad_accum, eval_interval, save_interval, patience)
# and run options (split mode, report_to, eval file, LoRA rank, alpha, dropout, targets)
FIXED = ["built-in corpus", None, None, "", "", "cpu", "auto", 1e-3, 1, 4, 4, 1, 2, 4, 0,
         "documents", "none", None, 0, 16.0, 0.0, ""]


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def finished(client, name):
    state = client.predict(name, api_name="/sweep_status")
    return all(t["status"] in ("done", "pruned", "failed") for t in state["trials"]) and state


@pytest.mark.parametrize("args, message", [
    (["../x", "learning_rate", "1e-3, 2e-3"], "sweep name must be a plain name"),
    (["ok1", "../../etc", "1e-3, 2e-3"], "not in the list of choices|swept setting must be one of"),
    (["ok2", "learning_rate", "1e-3," * 200], "at most 400 characters"),
    (["ok3", "learning_rate", ",".join(str(i / 1e4) for i in range(1, 30))], "values: learning_rate: at most 16 grid"),
    (["ok5", "learning_rate", "1e-3, 1e-3x"], r"values: learning_rate: '1e-3x' is not a number"),
    (["ok4", "learning_rate", "1e-4:1e-2"], r"greater than maximum value 64|trials must be in \[1, 64\]"),
])
def test_forged_sweep_inputs_are_refused(client, tiny_preset, args, message):
    trials = 1000 if args[0] == "ok4" else 2
    with pytest.raises(Exception, match=message):
        client.predict(*args, "none", "", trials, True, tiny_preset, *FIXED, api_name="/sweep_start")
    with pytest.raises(Exception, match="second values: choose its setting first"):
        client.predict("ok6", "learning_rate", "1e-3, 2e-3", "none", "64, 128", 2, True, tiny_preset, *FIXED,
                       api_name="/sweep_start")
    assert not (sweep.checkpoints_dir() / args[0]).exists() or args[0] == "../x"


def test_api_starts_a_sweep_watches_it_and_trials_are_runs(client, tiny_preset):
    client.predict("apisweep", "learning_rate", "1e-3, 1e-2", "none", "", 2, False, tiny_preset, *FIXED,
                   api_name="/sweep_start")
    with pytest.raises(Exception, match="already going"):  # one job at a time, a sweep counts
        client.predict("apisweep2", "learning_rate", "1e-3, 1e-2", "none", "", 2, False, tiny_preset, *FIXED,
                       api_name="/sweep_start")
    state = wait_for(lambda: finished(client, "apisweep"))
    assert [t["status"] for t in state["trials"]] == ["done", "done"]
    assert state["best"]["name"] in {"apisweep-0", "apisweep-1"}
    assert runs.read_run(runs.run_dir("apisweep-1"))["settings"]["max_steps"] == 4

    def stop_refused():  # the sweep's job ends once its trials have: then Stop has nothing to stop
        try:
            client.predict(api_name="/sweep_stop")
        except Exception as e:  # noqa: BLE001
            return "no training run is going" in str(e)
        return False

    wait_for(stop_refused, timeout=30)


@pytest.mark.browser
def test_the_tab_starts_a_two_trial_sweep_and_shows_rows_and_curves(page, tiny_preset):
    page.get_by_role("tab", name="Train", exact=True).click()
    picker = page.get_by_label("Model to train", exact=True)
    picker.fill(tiny_preset)
    page.get_by_role("option", name=tiny_preset, exact=True).click()
    expect(picker).to_have_value(tiny_preset)
    expect(page.get_by_label("max steps", exact=True)).to_have_value("2000")  # the model's defaults came in
    for label, value in (("max steps", "4"), ("eval interval", "2"), ("warmup steps", "1"), ("batch size", "4"),
                         ("save interval", "4")):
        field = page.get_by_label(label, exact=True)
        expect(field).to_be_visible(timeout=20000)
        field.fill(value)
        field.press("Tab")
    page.get_by_text("Sweep: one or two settings over several runs").click()
    page.get_by_label("Values or range", exact=True).fill("1e-3, 1e-2")
    page.get_by_label("Prune hopeless trials").uncheck()
    page.get_by_label("Sweep name", exact=True).fill("tabsweep")
    page.get_by_role("button", name="Start sweep", exact=True).click()
    status = page.get_by_label("Sweep status", exact=True)
    expect(status).to_have_value(re.compile(r"tabsweep: 2/2 trials ended; best tabsweep-\d"), timeout=120000)
    for trial in ("tabsweep-0", "tabsweep-1"):
        expect(page.get_by_text(trial, exact=True).filter(visible=True).first).to_be_visible()  # its table row
    # both trials' curves: their names in the overlay's legend
    legend = page.locator(".legendtext")
    expect(legend.filter(has_text="tabsweep-0")).to_have_count(1, timeout=20000)  # (the Runs overlay is empty)
    expect(legend.filter(has_text="tabsweep-1")).to_have_count(1)
    expect(legend.filter(has_text="(best)")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "sweep_section.png"), full_page=True)
