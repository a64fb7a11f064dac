"""`evolve-ray scale` refusals, each one line and in seconds, without a cluster: nothing to
scale, a count below 1, a run that never started, a run whose cluster is gone."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from evolve_ray.control import check_targets, locate, run_namespace
from evolve_ray.errors import UserError

from .cli_helpers import assert_one_line_error, run_cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once the socket closes: nothing listens there


def test_the_counts_asked_for_are_checked() -> None:
    assert check_targets({"generator": 3, "scorer": None}) == {"generator": 3}
    with pytest.raises(UserError, match="nothing to scale"):
        check_targets({"generator": None, "scorer": None})
    with pytest.raises(UserError, match="--scorers must be at least 1, got 0"):
        check_targets({"scorer": 0})


def test_the_run_is_found_by_its_record_or_by_address_and_name(tmp_path: Path) -> None:
    run = tmp_path / "my run"
    run.mkdir()
    with pytest.raises(UserError, match="control.json not found"):
        locate(str(run), None)
    assert locate(str(run), "10.0.0.1:6379") == ("10.0.0.1:6379", "evolve_ray.my_run")
    (run / "control.json").write_text(json.dumps({"address": "1.2.3.4:6379", "namespace": run_namespace(run.name)}))
    assert locate(str(run), None) == ("1.2.3.4:6379", "evolve_ray.my_run")
    assert locate(str(run), "5.6.7.8:6379")[0] == "5.6.7.8:6379"  # --address wins


def test_cli_refuses_a_zero_count_and_a_run_that_never_started(tmp_path: Path) -> None:
    r = run_cli("scale", str(tmp_path), "--generators", "0", timeout=60)
    assert r.returncode == 2 and "below the minimum 1" in r.stderr
    assert_one_line_error(run_cli("scale", str(tmp_path), "--generators", "2", timeout=60), "control.json not found")
    assert_one_line_error(run_cli("scale", str(tmp_path), timeout=60), "nothing to scale")


def test_cli_says_in_seconds_that_a_finished_run_is_not_running(tmp_path: Path) -> None:
    """A local run's cluster ends with its driver: its control.json names an address nothing
    listens on. Ray's own connect would retry for minutes; the command answers at once."""
    record = {"address": f"127.0.0.1:{_closed_port()}", "namespace": "evolve_ray.run"}
    (tmp_path / "control.json").write_text(json.dumps(record))
    r = run_cli("scale", str(tmp_path), "--generators", "2", timeout=60)
    assert_one_line_error(r, "no Ray cluster answers at 127.0.0.1:")
