"""Attempts on one reused Docker topology: each attempt's evidence is its own.

The proof that a reset cannot leak: attempt 1 punches a direct path (a router's conntrack flow and a public
node's socket samples between the two public addresses, `dcutr_direct` in the client's log); attempt 2 runs on
the same containers with DCUtR switched off, so it makes no such flow. Any event, sample or log line carried over
from attempt 1 would show up in attempt 2's artefacts, and these tests would fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.conntrack import parse_flows
from harness.ground_truth import parse_sockets
from harness.models import Verdict
from harness.verdict import first_missing_matches

pytestmark = pytest.mark.docker

RUNBOOKS = Path(__file__).resolve().parent.parent / "runbooks"

# The matrix runbook's steps on one topology: a public server (its socket table is sampled) and a client behind
# port-restricted NAT (its router's conntrack events), once with DCUtR and once without (relayed, quickly).
SCENARIOS = [
    {
        "id": "punch",
        "nodes": {"server": {"nat_profile": "none"}, "client": {"nat_profile": "port-restricted"}},
        "expect": {"verdict": "direct"},
    },
    {
        "id": "no_punch",
        "nodes": {
            "server": {"nat_profile": "none", "env": {"DCUTR_ENABLED": "false"}},
            "client": {
                "nat_profile": "port-restricted",
                "env": {"DCUTR_ENABLED": "false", "DIRECT_DEADLINE_SECS": "1"},
            },
        },
        "expect": {"verdict": "relayed"},
    },
]


@pytest.fixture
def two_scenarios(tmp_path: Path):
    from harness.runbook import load_runbook

    data = yaml.safe_load((RUNBOOKS / "matrix.yaml").read_text())
    data.pop("matrix")
    data["name"] = "reuse-isolation"
    data["markers"] = []
    data["scenarios"] = SCENARIOS
    path = tmp_path / "reuse.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_runbook(path)


def _direct_evidence(raw: Path, client_public: str, server_public: str) -> tuple[list[str], list[str]]:
    """(client-router flows between the two publics, server socket samples towards the client's public)."""
    flows = [
        f.text
        for f in parse_flows((raw / "client-router.conntrack").read_text())
        if {client_public, server_public} <= {host for host, _port in f.endpoints()}
    ]
    sockets = [s.text for s in parse_sockets((raw / "server.sockets").read_text()) if s.peer[0] == client_public]
    return flows, sockets


def _stamps(raw: Path) -> list[float]:
    """Every event time in the router's log and every sample time in the server's socket table."""
    events = [f.ts for f in parse_flows((raw / "client-router.conntrack").read_text()) if f.ts is not None]
    return events + [s.ts for s in parse_sockets((raw / "server.sockets").read_text())]


def test_a_reset_topology_keeps_no_evidence_of_the_attempt_before(images, two_scenarios, run_dir: Path, backend):
    from harness.runbook import run_scenario

    first = run_scenario(two_scenarios, "punch", backend, run_dir / "attempt-1", keep_raw=True)
    second = run_scenario(two_scenarios, "no_punch", backend, run_dir / "attempt-2", keep_raw=True, reuse=True)
    addresses = backend.addresses()
    client, server = addresses["client"].public_ip, addresses["server"].public_ip

    # Attempt 1 left exactly the evidence a leak would carry over.
    assert first.verdict == Verdict.direct, first.first_missing_text
    flows, sockets = _direct_evidence(run_dir / "attempt-1" / "raw", client, server)
    assert any("ESTABLISHED" in line and "[ASSURED]" in line for line in flows), flows
    assert sockets

    # Attempt 2, on the same containers, sees none of it: not in the router's events, not in the samples.
    assert second.verdict == Verdict.relayed, second.first_missing_text
    assert first_missing_matches(second.first_missing, "dcutr_direct"), second.first_missing_text
    raw = run_dir / "attempt-2" / "raw"
    assert _direct_evidence(raw, client, server) == ([], [])
    assert all(stamp >= second.started_at for stamp in _stamps(raw)), "an event or sample older than attempt 2"
    assert second.started_at > max(_stamps(run_dir / "attempt-1" / "raw"))

    # Nor in the logs: attempt 2's client never punched, and every line it logged is its own.
    for node in ("relay", "server", "client"):
        lines = (raw / f"{node}.log").read_text().splitlines()
        assert lines, node
        events = [json.loads(line) for line in lines if line.startswith("{")]
        assert all(event["ts"] >= _iso(second.started_at) for event in events), node
    client_log = (raw / "client.log").read_text().splitlines()
    client_events = [json.loads(line)["event"] for line in client_log if line.startswith("{")]
    assert "dcutr_direct" not in client_events and "relay_fallback" in client_events


def test_n_attempts_on_one_topology_each_decide_for_themselves(images, run_dir: Path):
    """`run_repeated` with N attempts: one lab, N direct verdicts, each with its own evidence; nothing left."""
    from harness.backends.docker import DockerBackend, sweep
    from harness.runbook import load_runbook, run_repeated

    runbook = load_runbook(RUNBOOKS / "phase4-mixed-nat.yaml")
    made: list[str] = []

    def make_backend(attempt: int) -> DockerBackend:
        made.append(f"{run_dir.name}r{attempt}")
        return DockerBackend(made[-1])

    repeat = run_repeated(runbook, "mixed_nat", make_backend, run_dir, attempts=2)
    assert len(made) == 1, "every attempt should have run on the first lab"
    assert [a.verdict for a in repeat.attempts] == [Verdict.direct, Verdict.direct], [
        a.first_missing_text for a in repeat.attempts
    ]
    for number in (1, 2):
        events = (run_dir / f"attempt-{number}" / "conntrack" / "client-router.conntrack").read_text()
        stamps = [f.ts for f in parse_flows(events) if f.ts is not None]
        assert stamps and min(stamps) >= repeat.attempts[number - 1].started_at
    assert sweep(run_id=made[0]) == (0, 0)


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")[:23]
