"""The CLI commands written here: exit codes 0 (as expected), 1 (not), 2 (bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from tests.fakes import FakeClock, lab
from tests.test_checkpoints import FIXTURES
from tests.test_runbook_models import PHASE4, RUNBOOKS


def test_verify_poc_phase4_is_relayed_not_direct(tmp_path, capsys):
    out = tmp_path / "v"
    code = main(["verify", "--logs", str(FIXTURES / "poc-phase4"), "--sut", "rusty-kaspa-poc", "--out", str(out)])
    assert code == 1
    text = capsys.readouterr().out
    assert "relayed" in text and "client.dcutr_direct" in text
    assert json.loads((out / "report.json").read_text())["verdict"] == "relayed"
    assert (
        main(
            [
                "verify",
                "-l",
                str(FIXTURES / "poc-phase4"),
                "--sut",
                "rusty-kaspa-poc",
                "-o",
                str(out),
                "--expect",
                "relayed",
            ]
        )
        == 0
    )


def test_verify_kaspad_bridge_with_ground_truth(tmp_path):
    """A real kaspad run with the router tables and the lab's addresses is direct; without the addresses the
    same logs are only unverified (exit 1), unless log-only evidence is accepted out loud."""
    base = Path(__file__).resolve().parent / "fixtures" / "kaspad-bridge" / "pass"
    public = [
        "--public",
        "client=<CLIENT_NAT_IP>",
        "--public",
        "server=<SERVER_NAT_IP>",
        "--public",
        "relay=<RELAY_IP>",
    ]
    args = ["verify", "--logs", str(base), "--sut", "kaspad-bridge"]
    assert main([*args, *public, "-o", str(tmp_path / "k")]) == 0
    record = json.loads((tmp_path / "k" / "report.json").read_text())
    assert record["verdict"] == "direct" and record["checkpoints"][-1]["status"] == "met"
    assert (tmp_path / "k" / "conntrack" / "client-router.conntrack").exists()
    assert main([*args, "-o", str(tmp_path / "u")]) == 1
    assert json.loads((tmp_path / "u" / "report.json").read_text())["verdict"] == "unverified"
    assert main([*args, "--accept-log-only", "-o", str(tmp_path / "a")]) == 0
    raw = FIXTURES / "kaspad-bridge"  # the synthetic excerpt keeps the fork's raw lab addresses: none survive
    assert main(["verify", "--logs", str(raw), "--sut", "kaspad-bridge", "-o", str(tmp_path / "r")]) == 1
    for path in (tmp_path / "r").rglob("*"):
        if path.is_file():
            assert "10.0.3." not in path.read_bytes().decode("utf-8", "replace"), path


def test_verify_with_explicit_node_files(tmp_path):
    base = FIXTURES / "poc-phase5"
    args = [f"--node={n}={base / (n + '.log')}" for n in ("relay", "server", "client")]
    code = main(
        [
            "verify",
            "--logs",
            str(tmp_path),
            "--sut",
            "rusty-kaspa-poc",
            "-o",
            str(tmp_path / "o"),
            *args,
            "--expect",
            "relayed",
        ]
    )
    assert code == 0


def test_verify_bad_input(tmp_path, capsys):
    assert main(["verify", "--logs", str(tmp_path / "none"), "--sut", "rusty-kaspa-poc"]) == 2
    assert main(["verify", "--logs", str(FIXTURES / "poc-phase4"), "--sut", "go-libp2p"]) == 2
    assert "unknown SUT 'go-libp2p'" in capsys.readouterr().err


def test_run_refuses_a_bad_runbook_before_any_backend(tmp_path, monkeypatch, capsys):
    import harness.backends

    def no_backend(*args, **kwargs):
        raise AssertionError("a backend was created for a bad runbook")

    monkeypatch.setattr(harness.backends, "create_backend", no_backend)
    bad = tmp_path / "bad.yaml"
    bad.write_text(PHASE4.read_text().replace("port-restricted", "port-restrictd"))
    assert main(["run", str(bad), "--reports", str(tmp_path / "r")]) == 2
    assert "unknown NAT profile 'port-restrictd'" in capsys.readouterr().err
    assert main(["run", str(PHASE4), "-s", "nope", "--reports", str(tmp_path / "r")]) == 2


@pytest.fixture
def fake_lab(monkeypatch):
    """`create_backend` hands out fake labs; the engine sleeps on their shared fake clock."""
    import harness.backends
    import harness.runbook.engine

    clock = FakeClock()
    monkeypatch.setattr(harness.runbook.engine, "Clock", lambda: clock)
    kinds = {"dcutr": True}

    def create(name, *, run_id, inventory=None):
        backend = lab(dcutr=kinds["dcutr"], fallback=not kinds["dcutr"])
        backend.clock = clock
        clock.now = 0.0
        return backend

    monkeypatch.setattr(harness.backends, "create_backend", create)
    return kinds


def test_run_writes_run_report_index_and_latest(tmp_path, fake_lab):
    reports = tmp_path / "reports"
    code = main(["run", str(PHASE4), "--scenario", "mixed_nat", "--reports", str(reports), "--poll", "0.2"])
    assert code == 0
    latest = reports / "latest"
    record = json.loads((latest / "report.json").read_text())
    assert record["kind"] == "run" and record["scenarios"][0]["label"] == "PASS"
    assert (latest / "mixed_nat" / "attempt-1" / "report.md").exists()
    assert "phase4-mixed-nat" in (reports / "index.md").read_text()


def test_run_not_as_expected_exits_1(tmp_path, fake_lab):
    fake_lab["dcutr"] = False  # every attempt relayed: mixed_nat fails after 3 attempts
    code = main(["run", str(PHASE4), "-s", "mixed_nat", "--reports", str(tmp_path), "--poll", "0.2"])
    assert code == 1
    record = json.loads((tmp_path / "latest" / "report.json").read_text())
    assert record["scenarios"][0]["label"] == "FAIL" and len(record["scenarios"][0]["attempts"]) == 3


def test_report_rerenders(tmp_path, fake_lab):
    main(["run", str(PHASE4), "-s", "mixed_nat", "--reports", str(tmp_path), "--poll", "0.2", "--no-retries"])
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink())
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("command", ["run", "verify", "report"])
def test_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_runbooks_dir_exists():
    assert Path(PHASE4).exists()


def test_a_bad_inventory_leaves_no_report_folder(tmp_path, capsys):
    inventory = tmp_path / "fleet.yml"
    inventory.write_bytes(b"all:\n  hosts:\n    r\xe9lay: {}\n")
    reports = tmp_path / "reports"
    args = ["run", str(RUNBOOKS / "phase6-remote-validation.yaml"), "--backend", "ssh", "--inventory", str(inventory)]
    assert main([*args, "--reports", str(reports), "--run-id", "badinv"]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
    assert not (reports / "badinv").exists()
