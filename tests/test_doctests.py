"""The examples in the engine's docstrings run, and say what the code does."""
import doctest
import importlib
import pkgutil

import studio

# the UI imports Gradio and the benchmarks are programs, not examples
SKIPPED = ("studio.ui", "studio.bench")


def engine_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(studio.__path__, "studio.")
                  if not m.name.startswith(SKIPPED))


def test_every_docstring_example_passes():
    results = {name: doctest.testmod(importlib.import_module(name)) for name in engine_modules()}
    failed = {name: r.failed for name, r in results.items() if r.failed}
    assert not failed, f"doctests failed (the report is in the captured stdout): {failed}"
    # a collector that found nothing would pass too: the examples that exist today must have run
    assert sum(r.attempted for r in results.values()) >= 8, results
