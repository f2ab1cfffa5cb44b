"""NAT conformance probe: classify every profile from the outside (RFC 4787 mapping, filtering, hairpinning).

One lab holds two observers on transit (two addresses, two ports each) and, per profile, a prober behind that
profile's router(s). The in-container programs are `dcutr-probe` (harness/nat/probe_agent.py, in the router
image): the prober measures and prints raw observations; `classify` turns them into a `ProbeResult`:

- mapping: the external ip:port three observers saw for one inside ip:port (IP1:p1, IP1:p2, IP2:p1). All equal:
  EIM; equal per address: ADM; all different: APDM. Port preservation: external port == inside port.
- filtering: from a second inside port that contacted IP1:p1 only, IP2 and then IP1 from another port open a
  connection to its mapping. IP2 gets through: EIF; only IP1: ADF; neither: APDF. How they were refused
  (silence or TCP reset) is the profile's unsolicited-inbound behaviour.
- unmapped: a SYN to a WAN port no mapping claims: dropped, or answered with a reset by the router itself.
- hairpin: the prober dials its own external mapping.

`probe_profiles(names, lab=...)` runs it on a lab shaped like `harness.nat.topology.NatLab` (the Docker backend's
`DockerLab`); everything else here is pure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

from harness.errors import LabError, SetupError
from harness.nat.profiles import Filtering, Mapping, NatConfig, Unsolicited, get_profile
from harness.nat.topology import HostT, NatLab, RouterT, node_host, router_chain

OBSERVER_PORTS = (3478, 3479)
MAP_PORT = 40100
FILTER_PORT = 40200
UNMAPPED_PORT = 9
DIAL_TIMEOUT = 1.5


class MappingObservation(BaseModel):
    model_config = ConfigDict(frozen=True)

    destination: str
    local: str | None = None
    observed: str | None = None


class ProbeResult(BaseModel):
    """What one profile did, next to what its config says. `matches_profile` is the conformance verdict."""

    model_config = ConfigDict(frozen=True)

    profile: str
    expected_label: str
    expected_mapping: Mapping | None
    expected_filtering: Filtering | None
    expected_unsolicited: Unsolicited | None
    expected_hairpin: bool | None
    expected_port_preservation: bool | None

    translated: bool | None = None
    local_ip: str | None = None
    external_ip: str | None = None
    mapping: Mapping | None = None
    port_preserved: bool | None = None
    filtering: Filtering | None = None
    unsolicited: Unsolicited | None = None  # how a refused inbound SYN to a mapped port was refused
    unmapped: Unsolicited | None = None  # how a SYN to a port no mapping claims was refused
    hairpin: bool | None = None
    hairpin_source: str | None = None
    observations: tuple[MappingObservation, ...] = ()
    errors: tuple[str, ...] = ()
    raw: dict[str, Any] = {}

    @property
    def label(self) -> str:
        if self.translated is False:
            return "routed"
        if self.mapping is None or self.filtering is None:
            return "?"
        return f"{self.mapping.short}/{self.filtering.short}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mismatches(self) -> list[str]:
        """Every way the measurement differs from the profile (empty when it conforms)."""
        problems = list(self.errors)
        expect_nat = self.expected_mapping is not None
        if self.translated is None:
            problems.append("no mapping observation")
            return problems
        if self.translated != expect_nat:
            problems.append(f"translated={self.translated}, profile says {'NAT' if expect_nat else 'no NAT'}")
            return problems
        if not expect_nat:
            if self.filtering is not None:
                problems.append(f"a public host filtered inbound ({self.filtering.short})")
            return problems
        pairs = [
            ("mapping", self.mapping, self.expected_mapping),
            ("filtering", self.filtering, self.expected_filtering),
            ("port preservation", self.port_preserved, self.expected_port_preservation),
            ("hairpin", self.hairpin, self.expected_hairpin),
            ("unsolicited SYN to an unmapped port", self.unmapped, self.expected_unsolicited),
        ]
        if self.unsolicited is not None or self.expected_filtering is not Filtering.endpoint_independent:
            pairs.append(("unsolicited SYN to a mapping", self.unsolicited, self.expected_unsolicited))
        for what, measured, expected in pairs:
            if measured != expected:
                problems.append(f"{what}: measured {_show(measured)}, profile says {_show(expected)}")
        return problems

    @computed_field  # type: ignore[prop-decorator]
    @property
    def matches_profile(self) -> bool:
        return not self.mismatches


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, Mapping | Filtering):
        return value.short
    return str(value.value if hasattr(value, "value") else value)


def _ip(endpoint: str | None) -> str | None:
    return endpoint.rpartition(":")[0] if endpoint else None


def _port(endpoint: str | None) -> int | None:
    return int(endpoint.rpartition(":")[2]) if endpoint else None


def _refusal(outcome: dict[str, Any] | None) -> Unsolicited | None:
    """How a dial that did not reach the prober was refused."""
    if not outcome or outcome.get("reached"):
        return None
    return {"timeout": Unsolicited.drop, "reset": Unsolicited.reject_rst}.get(str(outcome.get("result")))


def expectations(cfg: NatConfig) -> dict[str, Any]:
    """What a profile promises, flattened across its hops (a chain is as strict as its strictest hop)."""
    mapping, filtering = cfg.effective()
    hops = cfg.hops()
    return {
        "expected_label": cfg.label,
        "expected_mapping": mapping,
        "expected_filtering": filtering,
        "expected_unsolicited": cfg.effective_unsolicited() if hops else None,
        "expected_hairpin": all(h.hairpin for h in hops) if hops else None,
        "expected_port_preservation": all(h.port_preservation for h in hops) if hops else None,
    }


def classify(profile: str, raw: dict[str, Any], cfg: NatConfig | None = None) -> ProbeResult:
    """Raw prober output -> ProbeResult. Pure."""
    cfg = cfg or get_profile(profile)
    errors = [str(e) for e in raw.get("errors", [])]
    observations = tuple(
        MappingObservation(destination=str(m.get("observer")), local=m.get("local"), observed=m.get("observed"))
        for m in raw.get("mapping", [])
    )
    fields: dict[str, Any] = {"observations": observations, "local_ip": raw.get("local_ip"), "raw": raw}
    seen = [o.observed for o in observations]
    if len(seen) == 3 and all(seen):
        first, same_addr, other_addr = seen
        fields["external_ip"] = _ip(first)
        fields["translated"] = _ip(first) != raw.get("local_ip")
        if fields["translated"]:
            if first == same_addr == other_addr:
                fields["mapping"] = Mapping.endpoint_independent
            elif first == same_addr:
                fields["mapping"] = Mapping.address_dependent
            else:
                fields["mapping"] = Mapping.address_and_port_dependent
            fields["port_preserved"] = all(_port(s) == raw.get("map_port") for s in seen)
    elif observations:
        errors.append("the observers did not all report a source address")

    tests = raw.get("filtering") or {}
    same, other = tests.get("same_address_other_port"), tests.get("other_address")
    for name, outcome in (("same address, other port", same), ("other address", other)):
        if outcome and outcome.get("result") in ("error", "unreachable") and not outcome.get("reached"):
            errors.append(f"filtering dial ({name}): {outcome.get('result')} {outcome.get('error', '')}".strip())
    if same is not None and other is not None:
        if fields.get("translated") is False:
            fields["filtering"] = None if (same.get("reached") and other.get("reached")) else _filtering(same, other)
        else:
            fields["filtering"] = _filtering(same, other)
        refused = [o for o in (other, same) if not o.get("reached")]
        fields["unsolicited"] = _refusal(refused[0]) if refused else None
    elif fields.get("translated") is not None:
        errors.append("no filtering measurement")
    fields["unmapped"] = _refusal(raw.get("unmapped"))
    hairpin = raw.get("hairpin")
    if hairpin is not None:
        fields["hairpin"] = bool(hairpin.get("reached"))
        fields["hairpin_source"] = hairpin.get("seen_from")
    return ProbeResult(profile=profile, errors=tuple(errors), **expectations(cfg), **fields)


def _filtering(same: dict[str, Any], other: dict[str, Any]) -> Filtering:
    if other.get("reached"):
        return Filtering.endpoint_independent
    if same.get("reached"):
        return Filtering.address_dependent
    return Filtering.address_and_port_dependent


def parse_agent_output(output: str) -> dict[str, Any]:
    """The prober prints one JSON object; anything else on the line stream (warnings) is ignored."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise LabError(f"the prober printed no JSON report: {output.strip()[-500:]!r}")


# -- output ------------------------------------------------------------------------------------------------


def results_table(results: Sequence[ProbeResult]):
    """A rich table: one row per profile, measured against expected; mismatches are listed by `mismatch_lines`."""
    from rich.table import Table

    table = Table(title="NAT conformance (TCP, RFC 4787)")
    for column in ("profile", "expected", "measured", "ports", "refused", "hairpin", "verdict"):
        table.add_column(column, no_wrap=True)
    for r in results:
        nat = bool(r.translated)
        ports = "-" if r.port_preserved is None else ("preserved" if r.port_preserved else "random")
        refused = f"{_show(r.unsolicited)} / {_show(r.unmapped)}" if nat else "-"
        hairpin = "-" if r.hairpin is None or not nat else ("yes" if r.hairpin else "no")
        verdict = "[ok]conforms[/]" if r.matches_profile else "[error]MISMATCH[/]"
        table.add_row(r.profile, r.expected_label, r.label, ports, refused, hairpin, verdict)
    table.caption = "refused: unsolicited SYN to a mapping / to an unmapped port (drop = silence, reject-rst = TCP RST)"
    return table


def mismatch_lines(results: Sequence[ProbeResult]) -> list[str]:
    return [f"{r.profile}: {problem}" for r in results for problem in r.mismatches]


def results_json(results: Sequence[ProbeResult], *, include_raw: bool = False) -> str:
    exclude = None if include_raw else {"raw"}
    return json.dumps([r.model_dump(mode="json", exclude=exclude) for r in results], indent=2)


# -- orchestration (on a lab) ------------------------------------------------------------------------------

ProgressFn = Callable[[str], None]


def probe_profiles(
    names: Sequence[str],
    *,
    lab: NatLab[RouterT, HostT],
    timeout: float = DIAL_TIMEOUT,
    progress: ProgressFn | None = None,
) -> list[ProbeResult]:
    """Probe each profile in `lab` and classify it.

    Creates two observers on transit, then per profile its router(s) and a prober host; they stay until
    the lab closes (the caller owns the lab).
    """
    configs = [(name, get_profile(name)) for name in names]  # unknown names fail before anything starts
    say = progress or (lambda _message: None)
    image = lab.image("router")
    observers = []
    for index in (1, 2):
        host = lab.public_host(f"observer{index}", image=image)
        command = ["dcutr-probe", "observe"]
        for port in OBSERVER_PORTS:
            command += ["--port", str(port)]
        lab.process(f"observer{index}-agent", host, command, {}, image=image)
        observers.append(host)
    say(f"observers at {observers[0].ip} and {observers[1].ip}, ports {OBSERVER_PORTS[0]},{OBSERVER_PORTS[1]}")

    results = []
    for name, cfg in configs:
        node = f"probe-{name}"
        node_host(lab, node, router_chain(lab, node, name), image=image)
        command = [
            "dcutr-probe",
            "probe",
            "--observer",
            observers[0].ip,
            "--observer",
            observers[1].ip,
            "--ports",
            ",".join(str(p) for p in OBSERVER_PORTS),
            "--map-port",
            str(MAP_PORT),
            "--filter-port",
            str(FILTER_PORT),
            "--unmapped-port",
            str(UNMAPPED_PORT),
            "--timeout",
            f"{timeout:g}",
        ]
        result = lab.exec(node, command, timeout=60 + 10 * timeout)
        if result.exit_code != 0:
            raise SetupError(f"the prober behind {name} failed (exit {result.exit_code}): {result.output[-500:]}")
        probe_result = classify(name, parse_agent_output(result.output), cfg)
        say(f"{name}: {probe_result.label} ({'conforms' if probe_result.matches_profile else 'MISMATCH'})")
        results.append(probe_result)
    return results
