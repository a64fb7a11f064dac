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
    # --dist loadscope: a module's tests share its module fixtures (one run each) in one xdist worker;
    # --no-loadscope-reorder: modules are handed out longest first (tests/conftest.py).
    for step in (
        'ruff" check',
        'ruff" format --check',
        'mypy"',
        "-m pytest",
        "--dist loadscope --no-loadscope-reorder",
    ):
        assert step in check, step


def test_the_longest_first_modules_exist() -> None:
    """A renamed or removed module would silently fall back to xdist's order."""
    from tests.conftest import LONGEST_FIRST

    missing = [path for path in LONGEST_FIRST if not (ROOT / path).is_file()]
    assert not missing, missing
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
