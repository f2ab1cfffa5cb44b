"""TCP hole punching between profiles: the RFC 4787 prediction, result models, and the agent's rendezvous and
punch over loopback (no Docker)."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from harness.nat import probe_agent
from harness.nat.profiles import get_profile
from harness.nat.punch import Expectation, PunchResult, expected_outcome, pairs_of, side_from_report


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("none", "none", Expectation.direct),
        ("none", "symmetric", Expectation.direct),
        ("port-restricted", "port-restricted", Expectation.direct),
        ("full-cone", "cgnat", Expectation.direct),
        ("port-restricted", "openwrt-fw4", Expectation.racy),
        ("openwrt-fw4", "openwrt-fw4-fullcone", Expectation.racy),
        ("openwrt-fw4", "cgnat", Expectation.racy),
        ("full-cone", "openwrt-fw4", Expectation.direct),
        ("restricted-cone", "openwrt-fw4-fullcone", Expectation.direct),
        ("symmetric", "full-cone", Expectation.direct),
        ("symmetric", "restricted-cone", Expectation.direct),
        ("symmetric", "port-restricted", Expectation.fail),
        ("symmetric", "openwrt-fw4", Expectation.fail),
        ("symmetric", "cgnat", Expectation.fail),
        ("symmetric", "symmetric", Expectation.fail),
    ],
)
def test_expected_outcome(a: str, b: str, expected: Expectation) -> None:
    assert expected_outcome(get_profile(a), get_profile(b)) is expected
    assert expected_outcome(get_profile(b), get_profile(a)) is expected


def test_pairs_include_each_profile_with_itself_once() -> None:
    assert pairs_of(["x", "y"]) == [("x", "x"), ("x", "y"), ("y", "y")]


def side(outcome: str, attempts: int = 1) -> dict:
    return {"outcome": outcome, "attempts": [{"result": outcome}] * attempts, "you": "a:1", "peer": "b:2"}


def test_result_verdicts() -> None:
    ok = PunchResult(
        a=side_from_report("port-restricted", side("connected")),
        b=side_from_report("symmetric", side("accepted", 2)),
        trial=1,
        skew_s=0.0,
        expected=Expectation.fail,
    )
    assert ok.direct and ok.attempts == 2 and not ok.as_expected
    racy = ok.model_copy(update={"expected": Expectation.racy})
    assert racy.as_expected
    failed = ok.model_copy(update={"b": side_from_report("symmetric", side("failed", 3))})
    assert not failed.direct and failed.as_expected
    assert json.loads(failed.model_dump_json())["direct"] is False
    assert side_from_report("x", {}).outcome == "failed"


def test_rendezvous_pairs_two_sides_and_times_out_alone() -> None:
    observer = probe_agent.Observer([])
    lonely = observer.rendezvous("alone", "1.2.3.4:5", wait=0.1)
    assert lonely["ok"] is False and "no peer" in lonely["error"]
    replies: list[dict] = []
    thread = threading.Thread(target=lambda: replies.append(observer.rendezvous("s", "1.1.1.1:10", wait=5)))
    thread.start()
    second = observer.rendezvous("s", "2.2.2.2:20", wait=5)
    thread.join()
    assert second == {"ok": True, "you": "2.2.2.2:20", "peer": "1.1.1.1:10"}
    assert replies == [{"ok": True, "you": "1.1.1.1:10", "peer": "2.2.2.2:20"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_punch_over_loopback() -> None:
    observer = probe_agent.Observer([0])
    (port,) = observer.start()
    try:
        reports: dict[str, dict] = {}

        def run(name: str, source: str) -> None:
            reports[name] = probe_agent.punch(source, port, "loop", free_port(), 3, 1.0, 0.0, 5.0)

        threads = [threading.Thread(target=run, args=(n, ip)) for n, ip in (("a", "127.0.0.1"), ("b", "127.0.0.2"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        observer.stop()
    assert {reports["a"]["outcome"], reports["b"]["outcome"]} <= {"connected", "accepted"}
    assert reports["a"]["peer"] == reports["b"]["you"] and reports["b"]["peer"] == reports["a"]["you"]
    assert all(len(r["attempts"]) == 1 for r in reports.values())
