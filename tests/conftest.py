"""Test setup: offline everywhere, every file under tmp, a tiny model the tests make themselves."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from studio.bench.browser import CHROMIUM, CHROMIUM_ARGS  # the one list, shared with `bench train-tab`

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
GPT2_TOKENIZER_DIR = SHARED_DATA / "gpt2"
ARTIFACTS = ROOT / "artifacts"

os.environ["HF_HUB_OFFLINE"] = "1"  # hub calls fail at once instead of retrying for ~23 s
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the test processes share a few busy cores, where spinning OpenMP threads are many times slower;
# the product sets its policy per process (studio.interactive_threads / training_env)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def wait_for(fn, timeout=120, every=0.5):
    """`fn()`'s first truthy value, polled every `every` s; an AssertionError after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s")


@pytest.fixture(autouse=True, scope="session")
def _scratch_dirs(tmp_path_factory):
    """Caches and the checkpoints folder live under tmp for the whole session."""
    base = tmp_path_factory.mktemp("studio")
    for var, sub in [("STUDIO_CHECKPOINTS", "checkpoints"), ("TIKTOKEN_CACHE_DIR", "tiktoken"),
                     ("GRADIO_TEMP_DIR", "gradio"), ("HF_DATASETS_CACHE", "datasets")]:
        os.environ[var] = str(base / sub)
        (base / sub).mkdir()
    yield base


TINY = dict(name="tiny", n_layer=2, n_embd=32, n_head=2, block_size=64)


def _save_scratch(preset, tok) -> str:
    """A seeded scratch model saved as run `<preset name>` in the checkpoints folder; returns its identifier."""
    from studio import checkpoints_dir, models

    model = models.build_scratch(preset, tok, seed=0)
    models.save_model(model, tok, checkpoints_dir() / preset.name / "last", {"preset": preset.to_dict(), "step": 0})
    return preset.name


@pytest.fixture(scope="session")
def tiny_checkpoint(_scratch_dirs) -> str:
    """A 2-layer GPT-2-BPE model: run `tiny`."""
    from studio.presets import Preset
    from studio.tokenizer import GPT2BPE

    return _save_scratch(Preset(**TINY), GPT2BPE())


@pytest.fixture(scope="session")
def tiny_char_checkpoint(_scratch_dirs) -> str:
    """The same tiny model with a character tokenizer (no GPT-2 files needed): run `tiny-char`."""
    from studio.presets import Preset
    from studio.tokenizer import CharTokenizer

    preset = Preset(**{**TINY, "name": "tiny-char", "tokenizer": "char", "vocab_size": 64})
    tok = CharTokenizer.from_texts(["Human: What is 2 plus 3?\nAssistant: 5 abcdefghijklmnopqrstuvwxyz"])
    return _save_scratch(preset, tok)


@pytest.fixture(scope="session")
def long_checkpoint(_scratch_dirs) -> str:
    """A model slow enough to stop mid-reply: 1,024-token context (so 512 new tokens), ~9 ms a token here."""
    from studio.presets import Preset
    from studio.tokenizer import GPT2BPE

    return _save_scratch(Preset(name="long", n_layer=4, n_embd=256, n_head=8, block_size=1024), GPT2BPE())


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (CI runs them all)")
    config.addinivalue_line("markers", "browser: drives Debian's chromium through playwright")
    # gradio 6.31's queue trips pandas 3 deprecations on every event: noise, not ours to fix
    config.addinivalue_line("filterwarnings", "ignore::pandas.errors.Pandas4Warning")


@pytest.fixture(scope="session")
def app_url(_scratch_dirs):
    """The whole app, served on a free localhost port for the session."""
    from studio.ui import build_app, serve

    demo = build_app()
    url = serve.launch(demo).local_url  # with the app's own guards (Host, Origin, cookies, queue)
    yield url
    demo.close()
    demo.workspace.close()  # a run the tests started must not outlive them


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium through playwright; CI installs it, elsewhere the test skips without it."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium (apt-get install chromium) for the browser tests")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    ARTIFACTS.mkdir(exist_ok=True)
    pg = browser.new_page(viewport={"width": 1280, "height": 1000})
    pg.goto(app_url, wait_until="load")  # never "networkidle": gr.Timer polling keeps the network busy
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def tiny_preset():
    """A designed 1-layer, 32-wide character preset: a 6-step run takes a fraction of a second. The
    module's designed presets (this one, a sweep's shape presets) are removed after it."""
    from studio.presets import Preset, save_preset, user_presets_dir

    made = set(user_presets_dir().glob("*.json"))
    save_preset(Preset(name="tiny-designed", n_layer=1, n_embd=32, n_head=2, block_size=64, tokenizer="char",
                       vocab_size=64))
    yield "tiny-designed"
    for path in set(user_presets_dir().glob("*.json")) - made:
        path.unlink()


def write_chat_file(folder, n: int) -> str:
    """`n` built-in exchanges as a user/assistant JSONL file in `folder` (chat data: the loss scores the answers)."""
    import json

    from studio.data import builtin_examples

    path = folder / "chat.jsonl"
    train_ex, _ = builtin_examples(n, 5)
    path.write_text("".join(json.dumps({"user": e.question, "assistant": e.answer}) + "\n" for e in train_ex))
    return str(path)


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    """200 built-in exchanges as a user/assistant JSONL file."""
    return write_chat_file(tmp_path_factory.mktemp("data"), 200)
