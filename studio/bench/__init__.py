"""Benchmarks, apart from the engine: each module measures one thing and returns it as a dict.

    train.py         the training loop's own cost (vs a bare PyTorch loop) and the fast path's speedup
    memory.py        memory.estimate() against the measured peak, one fresh process per case
    memory_probe.py  that fresh process: `python -m studio.bench.memory_probe PRESET BATCH SEQ PRECISION CKPT`
    compare.py       batched side-by-side decoding against one `model.generate` per setting
    chat.py          a chat reply's time to first token and tokens/s
    lora.py          LoRA r=8 against full fine-tuning on gpt2-medium's shape (each config a fresh process)
    train_tab.py     training tokens/s with the Train tab open in a real browser, against the CLI
    lesson.py        the lesson over several seeds (fresh processes): the worst score and the median time
    browser.py       Debian's chromium and its flags (shared with the browser tests)

The package imports the engine; nothing in the engine imports it. `python -m studio bench ...`
runs them. This file imports nothing, so `studio.bench.browser` stays light for tests/conftest.py.
"""
