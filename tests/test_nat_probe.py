"""The NAT probe's pure half: classification of raw observations, result models, output, and the in-container
agent itself exercised over loopback (no Docker, no NAT)."""

from __future__ import annotations

import json
import socket

import pytest

from harness.errors import LabError
from harness.nat import probe_agent
from harness.nat.probe import (
    ProbeResult,
    classify,
    mismatch_lines,
    parse_agent_output,
    results_json,
    results_table,
)
from harness.nat.profiles import Filtering, Mapping, Unsolicited

WAN = "198.18.0.10"
LAN = "192.168.1.2"
O1, O2 = "198.18.0.20", "198.18.0.21"


def outcome(result: str, reached: bool = False, seen_from: str | None = None) -> dict:
    return {"result": result, "reached": reached, "seen_from": seen_from}


def raw_report(
    *,
    observed: tuple[str, str, str] = (f"{WAN}:40100",) * 3,
    local_ip: str = LAN,
    same: dict | None = None,
    other: dict | None = None,
    unmapped: dict | None = None,
    hairpin: dict | None = None,
    errors: tuple[str, ...] = (),
) -> dict:
    destinations = [f"{O1}:3478", f"{O1}:3479", f"{O2}:3478"]
    return {
        "local_ip": local_ip,
        "map_port": 40100,
        "filter_port": 40200,
        "mapping": [
            {"observer": d, "local": f"{local_ip}:40100", "observed": o}
            for d, o in zip(destinations, observed, strict=True)
        ],
        "filter_external": f"{WAN}:40200",
        "filtering": {
            "same_address_other_port": same or outcome("timeout"),
            "other_address": other or outcome("timeout"),
        },
        "unmapped": unmapped or outcome("timeout"),
        "hairpin": hairpin or outcome("reset"),
        "errors": list(errors),
    }


def test_port_restricted_behaviour_conforms() -> None:
    result = classify("port-restricted", raw_report())
    assert result.translated is True
    assert result.mapping is Mapping.endpoint_independent
    assert result.filtering is Filtering.address_and_port_dependent
    assert result.port_preserved is True
    assert result.unsolicited is Unsolicited.drop
    assert result.unmapped is Unsolicited.drop
    assert result.hairpin is False
    assert result.label == "EIM/APDF"
    assert result.matches_profile, result.mismatches


def test_full_cone_behaviour_conforms() -> None:
    reached = outcome("connected", True, f"{O2}:5555")
    hairpin = outcome("connected", True, f"{WAN}:40999")
    result = classify("full-cone", raw_report(same=reached, other=reached, hairpin=hairpin))
    assert result.filtering is Filtering.endpoint_independent
    assert result.unsolicited is None  # nothing was refused on the mapping
    assert result.hairpin is True and result.hairpin_source == f"{WAN}:40999"
    assert result.matches_profile, result.mismatches


def test_restricted_cone_behaviour_conforms() -> None:
    result = classify("restricted-cone", raw_report(same=outcome("connected", True)))
    assert result.filtering is Filtering.address_dependent
    assert result.matches_profile, result.mismatches


def test_symmetric_behaviour_conforms() -> None:
    observed = (f"{WAN}:51234", f"{WAN}:23456", f"{WAN}:61111")
    result = classify("symmetric", raw_report(observed=observed))
    assert result.mapping is Mapping.address_and_port_dependent
    assert result.port_preserved is False
    assert result.matches_profile, result.mismatches


def test_address_dependent_mapping_is_recognised() -> None:
    observed = (f"{WAN}:40100", f"{WAN}:40100", f"{WAN}:40777")
    result = classify("port-restricted", raw_report(observed=observed))
    assert result.mapping is Mapping.address_dependent
    assert not result.matches_profile
    assert any("mapping: measured ADM, profile says EIM" in m for m in result.mismatches)


def test_openwrt_resets_are_recognised() -> None:
    raw = raw_report(same=outcome("reset"), other=outcome("reset"), unmapped=outcome("reset"))
    result = classify("openwrt-fw4", raw)
    assert result.unsolicited is Unsolicited.reject_rst
    assert result.unmapped is Unsolicited.reject_rst
    assert result.matches_profile, result.mismatches
    # the same behaviour behind a profile that promises silence is a mismatch
    dropped = classify("port-restricted", raw)
    assert not dropped.matches_profile
    assert any("unmapped port: measured reject-rst, profile says drop" in m for m in dropped.mismatches)


def test_router_answering_on_an_unmapped_port_is_a_mismatch() -> None:
    result = classify("symmetric", raw_report(observed=(f"{WAN}:1", f"{WAN}:2", f"{WAN}:3"), unmapped=outcome("reset")))
    assert result.mismatches == ["unsolicited SYN to an unmapped port: measured reject-rst, profile says drop"]


def test_public_host_conforms_to_none() -> None:
    here = "198.18.0.30"
    reached = outcome("connected", True)
    raw = raw_report(observed=(f"{here}:40100",) * 3, local_ip=here, same=reached, other=reached)
    result = classify("none", raw)
    assert result.translated is False
    assert result.mapping is None and result.filtering is None
    assert result.label == "routed"
    assert result.matches_profile, result.mismatches


def test_a_nat_where_none_was_promised_is_a_mismatch() -> None:
    result = classify("none", raw_report())
    assert not result.matches_profile
    assert "profile says no NAT" in result.mismatches[0]


def test_cgnat_is_judged_by_its_strictest_hop() -> None:
    result = classify("cgnat", raw_report())
    assert result.expected_mapping is Mapping.endpoint_independent
    assert result.expected_filtering is Filtering.address_and_port_dependent
    assert result.expected_hairpin is False
    assert result.matches_profile, result.mismatches


def test_missing_observations_and_agent_errors_never_conform() -> None:
    raw = raw_report(errors=("observe 198.18.0.20:3478 from :40100: timed out",))
    raw["mapping"][1]["observed"] = None
    result = classify("port-restricted", raw)
    assert not result.matches_profile
    assert result.mismatches[0].startswith("observe 198.18.0.20")
    assert any("did not all report" in m for m in result.mismatches)
    empty = classify("port-restricted", {"errors": []})
    assert not empty.matches_profile


def test_unreachable_dials_are_reported_as_errors() -> None:
    raw = raw_report(other={"result": "unreachable", "reached": False, "error": "EHOSTUNREACH: No route to host"})
    result = classify("port-restricted", raw)
    assert not result.matches_profile
    assert any("EHOSTUNREACH" in m for m in result.mismatches)


def test_parse_agent_output_takes_the_last_json_line() -> None:
    assert parse_agent_output('warning: x\n{"a": 1}\n') == {"a": 1}
    with pytest.raises(LabError, match="no JSON"):
        parse_agent_output("Traceback (most recent call last):\n  boom\n")


def test_outputs() -> None:
    results = [classify("port-restricted", raw_report()), classify("none", raw_report())]
    data = json.loads(results_json(results))
    assert [r["profile"] for r in data] == ["port-restricted", "none"]
    assert data[0]["matches_profile"] is True and data[1]["matches_profile"] is False
    assert "raw" not in data[0]
    assert "raw" in json.loads(results_json(results, include_raw=True))[0]
    assert ProbeResult.model_validate(data[0] | {"raw": {}}).matches_profile
    assert mismatch_lines(results)[0].startswith("none: ")
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(results_table(results))
    text = console.export_text()
    assert "port-restricted" in text and "MISMATCH" in text and "conforms" in text


# -- the agent, over loopback -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def observer():
    agent = probe_agent.Observer([0, 0], host="0.0.0.0")
    ports = agent.start()
    yield ports
    agent.stop()


def test_agent_observes_and_dials_over_loopback(observer: list[int]) -> None:
    prober = probe_agent.Prober(["127.0.0.1", "127.0.0.2"], observer, timeout=1.0, connect_wait=2.0)
    raw = prober.run(free_port(), free_port(), unmapped_port=free_port())
    assert raw["errors"] == []
    assert [m["observer"] for m in raw["mapping"]] == [
        f"127.0.0.1:{observer[0]}",
        f"127.0.0.1:{observer[1]}",
        f"127.0.0.2:{observer[0]}",
    ]
    # no NAT on loopback: the observers see the prober's own address and port
    assert {m["observed"].rpartition(":")[2] for m in raw["mapping"]} == {str(raw["map_port"])}
    other = raw["filtering"]["other_address"]
    assert other["reached"] and other["from"].startswith("127.0.0.2:")  # dialled from the address asked
    assert other["seen_from"] == other["from"]
    assert raw["unmapped"]["result"] == "reset"  # nothing listens there: the kernel answers RST
    assert raw["hairpin"]["reached"]
    result = classify("none", json.loads(json.dumps(raw)))
    assert result.translated is False
    assert result.matches_profile, result.mismatches


def test_agent_dial_outcomes() -> None:
    closed = free_port()
    assert probe_agent.dial(f"127.0.0.1:{closed}", "n", 1.0)["result"] == "reset"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        outcome = probe_agent.dial(target, "n", 0.5)
        # accepted by the kernel, but nobody answered the hello: connected, not reached
        assert outcome["result"] == "connected" and outcome["reached"] is False


def test_agent_cli_requires_two_observers() -> None:
    with pytest.raises(SystemExit):
        probe_agent.Prober(["127.0.0.1"], [1, 2], 1.0, 1.0)
