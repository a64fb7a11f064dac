"""`evolve-ray scale` without a cluster: refusals, each one line and in seconds (nothing to scale, a
count below 1, a run that never started, a run whose cluster is gone); how it authenticates as the
run's record says; and the arithmetic that refuses or warns about a scale-up the cluster cannot
place, and sizes a local cluster."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from evolve_ray.config import Config, replace
from evolve_ray.driver.control import (
    Capacity,
    Located,
    auth_record,
    check_targets,
    judge,
    local_cpus,
    locate,
    run_namespace,
    use_auth,
)
from evolve_ray.errors import UserError
from evolve_ray.reporting.status import StatusWriter, format_status

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
    assert locate(str(run), "10.0.0.1:6379") == Located("10.0.0.1:6379", "evolve_ray.my_run", None)
    auth = {"mode": "token", "token_file": "/home/u/.ray/auth_token"}
    record = {"address": "1.2.3.4:6379", "namespace": run_namespace(run.name), "auth": auth}
    (run / "control.json").write_text(json.dumps(record))
    assert locate(str(run), None) == Located("1.2.3.4:6379", "evolve_ray.my_run", auth)
    assert locate(str(run), "5.6.7.8:6379").address == "5.6.7.8:6379"  # --address wins


# ----------------------------------------------------------------------------------------------
# Whether a scale request can be placed (control.judge), and the local cluster's size


def _cap(local: bool) -> Capacity:
    """The defaults: 0.5 CPU per generator, 0.25 per scorer, two train workers of 0.5."""
    return Capacity.of(Config(), local=local)


ONE = {"generator": 1, "scorer": 1}


def test_the_local_cluster_has_room_for_one_more_generator_and_scorer() -> None:
    """Defaults: 2 x 0.5 (train) + 0.5 + 0.25 = 1.75 reserved; with one more of each 2.5 -> 3."""
    assert local_cpus(Config(), cores=2) == (3, 1.75)
    assert local_cpus(Config(), cores=16) == (16, 1.75)  # never fewer than the machine's cores
    two = replace(Config(), generation={"num_generators": 2})  # 2.25 reserved, 3.0 with room: exactly 3
    assert local_cpus(two, cores=2) == (3, 2.25)


def test_a_local_run_takes_what_its_cluster_holds_and_refuses_more_in_one_line() -> None:
    cap, cluster = _cap(local=True), {"CPU": 3.0}
    # 1.0 + 2 x 0.5 + 0.25 = 2.25 <= 3, whatever is free right now (a leaving actor frees its share)
    assert judge(cap, ONE, {"generator": 2, "scorer": 1}, cluster=cluster, free={"CPU": 0.0}, ceiling=None) == (
        None,
        None,
    )
    refused, note = judge(cap, ONE, {"generator": 4, "scorer": 1}, cluster=cluster, free=cluster, ceiling=None)
    assert note is None and refused is not None
    assert refused.startswith("4 generator(s) and 1 scorer(s) with the train workers would reserve 3.25 logical CPUs")
    assert "local cluster has 3 (no node can join it)" in refused and "--resume RUN --set" in refused
    # fewer is always fine
    assert judge(cap, ONE, {"generator": 1, "scorer": 1}, cluster={"CPU": 1.0}, free={}, ceiling=None) == (None, None)


def test_an_existing_cluster_without_room_says_what_will_come() -> None:
    cap, two = _cap(local=False), {"generator": 2, "scorer": 1}
    assert judge(cap, ONE, two, cluster={"CPU": 8.0}, free={"CPU": 0.5}, ceiling=None) == (None, None)
    refused, note = judge(cap, ONE, two, cluster={"CPU": 2.0}, free={"CPU": 0.25}, ceiling=None)
    assert refused is None and note is not None
    assert note.startswith("the cluster has 0.25 logical CPUs free and no autoscaler: nothing will come")
    assert "cluster.placement_timeout_s=600 s" in note
    refused, note = judge(cap, ONE, two, cluster={"CPU": 2.0}, free={"CPU": 0.25}, ceiling={"CPU": 64.0})
    assert refused is None and note is not None and "its autoscaler is asked for a node" in note
    refused, note = judge(cap, ONE, two, cluster={"CPU": 2.0}, free={"CPU": 0.25}, ceiling={"CPU": 2.0})
    assert note is None and refused is not None and "autoscaler can grow it to 2" in refused


def test_the_record_names_where_the_token_is_never_the_token(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_record() == {"mode": "disabled"}
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # what ray.init sets when it starts a local cluster
    assert auth_record() == {"mode": "token", "token_file": str(tmp_path / ".ray" / "auth_token")}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert auth_record()["token_file"] == str(tmp_path / "tok")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    assert auth_record() == {"mode": "token", "token_file": None}
    assert "secret" not in json.dumps(auth_record())


def test_scale_authenticates_as_the_record_says_or_says_why_it_cannot(monkeypatch, tmp_path: Path) -> None:
    # use_auth writes os.environ itself: setenv first so that monkeypatch records each variable
    # and takes back what use_auth left (a delenv of an absent one records nothing, and the
    # leftovers reached later tests' drivers in this worker).
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    token = tmp_path / "auth_token"
    token.write_text("t" * 32)
    use_auth({"mode": "token", "token_file": str(token)}, "runs/x")
    assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    with pytest.raises(UserError, match=r"its token file .*missing cannot be read here"):
        use_auth({"mode": "token", "token_file": str(tmp_path / "missing")}, "runs/x")
    with pytest.raises(UserError, match="took the token from the RAY_AUTH_TOKEN variable: set RAY_AUTH_TOKEN here"):
        use_auth({"mode": "token", "token_file": None}, "runs/x")
    # --address from another machine: RAY_AUTH_MODE as the caller set it (Ray's rule for an address
    # given by hand: a token on this machine is not sent anywhere unasked)
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 32)
    use_auth(None, "x")
    assert "RAY_AUTH_MODE" not in os.environ


def test_cli_refuses_a_zero_count_and_a_run_that_never_started(tmp_path: Path) -> None:
    r = run_cli("scale", str(tmp_path), "--generators", "0", timeout=60)
    assert r.returncode == 2 and "below the minimum 1" in r.stderr
    assert_one_line_error(run_cli("scale", str(tmp_path), "--generators", "2", timeout=60), "control.json not found")
    assert_one_line_error(run_cli("scale", str(tmp_path), timeout=60), "nothing to scale")


def test_cli_says_in_seconds_that_a_finished_run_is_not_running(tmp_path: Path) -> None:
    """A local run's cluster ends with its driver: its control.json names an address nothing
    listens on. Ray's own connect would retry for minutes; the command answers at once."""
    record = {"address": f"127.0.0.1:{_closed_port()}", "namespace": "evolve_ray.run", "auth": {"mode": "disabled"}}
    (tmp_path / "control.json").write_text(json.dumps(record))
    r = run_cli("scale", str(tmp_path), "--generators", "2", timeout=60)
    assert_one_line_error(r, "no Ray cluster answers at 127.0.0.1:")


def test_status_shows_the_slots_waiting_to_be_placed_or_given_up(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("{}\n")
    writer = StatusWriter(tmp_path, rounds=2)
    lines = ["generator 1 waiting to be placed since 10:00:00 (given up after 600 s)"]
    writer.update(state="running", round=0, stage="collect", scaling=lines)
    try:
        assert f"scaling: {lines[0]}" in format_status(tmp_path).splitlines()
    finally:
        writer.close("finished")
