"""What the app costs while idle: the page's script comes first, the queue's idle polls are slower."""
import json
from types import SimpleNamespace

import pytest
import requests

from studio.ui import idle


def test_the_page_gets_the_frame_script_before_gradios_modules(app_url):
    page = requests.get(app_url, timeout=30)
    assert page.status_code == 200
    assert int(page.headers["content-length"]) == len(page.content)
    head = page.text.split("<head>", 1)[1]
    assert head.startswith(idle.PAGE_SCRIPT)  # before any module script captures requestAnimationFrame
    assert page.text.count(idle.PAGE_SCRIPT) == 1
    config = requests.get(f"{app_url}config", timeout=30)  # any other response passes untouched
    assert idle.PAGE_SCRIPT not in config.text and json.loads(config.text)["components"]


def test_the_queue_polls_slower_when_idle_and_a_renamed_setting_fails_loudly():
    from studio.ui import build_app

    demo = build_app()
    assert (demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free) == (
        idle.QUEUE_IDLE_POLL_S, idle.PROGRESS_IDLE_POLL_S)
    renamed = SimpleNamespace(_queue=SimpleNamespace(idle_sleep=0.001, progress_update_sleep_when_free=0.01))
    with pytest.raises(RuntimeError, match="sleep_when_free"):
        idle.quiet_queue(renamed)
