"""CI runs the README's test command, and that command lints and type-checks before the tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert f"    {ci}  " in readme, ci  # the command as the README's Tests section shows it
    check = (ROOT / "cluster" / "check.sh").read_text()
    assert ci.endswith("bash cluster/check.sh")
    # --dist loadscope: a module's tests share its module fixtures (one run each) in one xdist worker.
    for step in ('ruff" check', 'ruff" format --check', 'mypy"', "-m pytest", "--dist loadscope"):
        assert step in check, step
