"""The README's first two commands are the contract with a new user; CI must run the second."""
import re

from conftest import ROOT


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_opens_with_install_and_run_then_install_and_test():
    start, test = readme_commands()[:2]
    assert "pip install -r requirements.txt" in start and start.endswith("python app.py")
    assert "pip install -r requirements.txt" in test and "pytest" in test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci


def test_torch_is_pinned_so_no_cuda_wheels_are_pulled():
    reqs = (ROOT / "requirements.txt").read_text().splitlines()
    assert any(re.fullmatch(r"torch==[\d.]+", r.strip()) for r in reqs)
