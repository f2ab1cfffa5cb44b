"""TCP hole punching between two NAT profiles, without libp2p: the NAT-level ground truth for the matrix.

Each side sits behind its profile's router(s). Like DCUtR, both hold a connection from their listen port to a
rendezvous (an observer standing in for the relay), learn each other's observed address from it at the same
moment, and dial each other from that same port (SO_REUSEPORT) up to `attempts` times. A pair is `direct`
when both sides end up on one TCP connection to each other (both connect()s succeed in a simultaneous open, or
one side's SYN reaches the other's listener).

Link latency matters: with none, a router that resets unsolicited SYNs (openwrt-fw4) often sees the other
side's SYN before its own side's left and kills that attempt; on real links both SYNs are in flight at once.
`wan_delay_ms` puts a delaying wire on the WAN of each side's outermost router (harness.nat.topology.router_chain,
as the runbook backend does; on Docker see DockerLab.router).

`expected_outcome` derives what RFC 4787 properties predict; `punch_pairs` measures it on a lab shaped like
`harness.nat.topology.NatLab` (the Docker backend's `DockerLab`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

from harness.errors import SetupError
from harness.nat.probe import OBSERVER_PORTS, parse_agent_output
from harness.nat.profiles import Filtering, Mapping, NatConfig, Unsolicited, get_profile
from harness.nat.topology import HostT, NatLab, RouterT, node_host, router_chain

FIRST_LISTEN_PORT = 41000


class Expectation(StrEnum):
    direct = "direct"  # the punch succeeds on the first attempt (maybe after a SYN retransmission)
    racy = "racy"  # timing decides: a router resets a SYN that arrives before its side's SYN left
    fail = "fail"  # no direct path: the relay has to stay


def expected_outcome(a: NatConfig, b: NatConfig) -> Expectation:
    """What the two profiles' RFC 4787 properties predict for a simultaneous TCP open between them."""
    (ma, fa), (mb, fb) = a.effective(), b.effective()
    if ma is None or mb is None:
        return Expectation.direct  # a public side: the NATed side's SYN reaches its listener
    eim_a, eim_b = ma is Mapping.endpoint_independent, mb is Mapping.endpoint_independent
    if not eim_a and not eim_b:
        return Expectation.fail  # neither observed address is where the other's SYN must go
    if not (eim_a and eim_b):
        # One side's SYN leaves from a fresh port; only an EIF/ADF mapping on the other side lets it in
        # (and then the EIM side's own SYN is lost: the connection is the one its listener accepts).
        open_side = fb if not eim_a else fa
        if open_side is Filtering.address_and_port_dependent:
            return Expectation.fail
    # The race: X's SYN reaches Y's router before Y's own SYN left. A dropping router loses nothing (the
    # retransmission gets in); a resetting one kills X's attempt and X's conntrack entry, so Y's SYN then
    # meets X's router as unsolicited: a cone (EIF/ADF) lets it in anyway, an APDF router does not.
    strict = Filtering.address_and_port_dependent
    resets_a = a.effective_unsolicited() is Unsolicited.reject_rst
    resets_b = b.effective_unsolicited() is Unsolicited.reject_rst
    if (resets_b and fa is strict) or (resets_a and fb is strict):
        return Expectation.racy
    return Expectation.direct


class PunchSide(BaseModel):
    model_config = ConfigDict(frozen=True)

    profile: str
    outcome: str  # connected | accepted | failed
    you: str | None = None
    peer: str | None = None
    attempts: tuple[dict[str, Any], ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("connected", "accepted")


class PunchResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    a: PunchSide
    b: PunchSide
    trial: int
    skew_s: float
    expected: Expectation
    delay_ms: float = 0.0  # one-way delay of each router's WAN link
    loss: float = 0.0  # percent of frames each router's WAN link dropped, each way

    @computed_field  # type: ignore[prop-decorator]
    @property
    def direct(self) -> bool:
        return self.a.ok and self.b.ok

    @computed_field  # type: ignore[prop-decorator]
    @property
    def attempts(self) -> int:
        return max(len(self.a.attempts), len(self.b.attempts))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def as_expected(self) -> bool:
        if self.expected is Expectation.racy:
            return True  # either way is within the prediction; the success rate is the finding
        return self.direct == (self.expected is Expectation.direct)


def side_from_report(profile: str, report: dict[str, Any]) -> PunchSide:
    return PunchSide(
        profile=profile,
        outcome=str(report.get("outcome", "failed")),
        you=report.get("you"),
        peer=report.get("peer"),
        attempts=tuple(report.get("attempts", [])),
        error=report.get("error"),
    )


def pairs_of(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of the profiles, each profile with itself included."""
    return list(itertools.combinations_with_replacement(names, 2))


def punch_pairs(
    pairs: Sequence[tuple[str, str]],
    *,
    lab: NatLab[RouterT, HostT],
    trials: int = 1,
    attempts: int = 3,
    dial_timeout: float = 2.0,
    skew: float = 0.0,
    wan_delay_ms: float = 0.0,
    wan_loss: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> list[PunchResult]:
    """Measure each pair `trials` times on `lab`.

    `skew` > 0 delays side b's dial by that many seconds after the rendezvous (side a's when < 0): the
    timing error a real DCUtR exchange has when its RTT estimate is off. `wan_delay_ms` and `wan_loss`
    (percent) shape the WAN link of each side's outermost router; the rendezvous stays on transit, like the
    relay of a run.
    """
    say = progress or (lambda _message: None)
    for a, b in pairs:
        get_profile(a), get_profile(b)  # unknown names fail before anything starts
    image = lab.image("router")
    rendezvous = lab.public_host("rendezvous", image=image)
    command = ["dcutr-probe", "observe", *itertools.chain.from_iterable(("--port", str(p)) for p in OBSERVER_PORTS)]
    lab.process("rendezvous-agent", rendezvous, command, {}, image=image)

    hosts: dict[tuple[str, str], str] = {}

    def host_for(profile: str, side: str) -> str:
        """One host per (profile, side), reused by every pair: each trial punches from a fresh port."""
        key = (profile, side)
        if key not in hosts:
            node = f"{side}-{profile}"
            routers = router_chain(lab, node, profile, wan_delay_ms=wan_delay_ms, wan_loss=wan_loss)
            node_host(lab, node, routers, image=image)
            hosts[key] = node
        return hosts[key]

    results: list[PunchResult] = []
    port = FIRST_LISTEN_PORT
    with ThreadPoolExecutor(max_workers=2) as pool:
        for a, b in pairs:
            expected = expected_outcome(get_profile(a), get_profile(b))
            node_a, node_b = host_for(a, "a"), host_for(b, "b")
            for trial in range(1, trials + 1):
                port += 1
                session = f"{a}~{b}~{trial}"
                delays = (max(0.0, -skew), max(0.0, skew))
                futures = [
                    pool.submit(
                        lab.exec,
                        node,
                        [
                            "dcutr-probe",
                            "punch",
                            "--observer",
                            rendezvous.ip,
                            "--port",
                            str(OBSERVER_PORTS[0]),
                            "--session",
                            session,
                            "--listen-port",
                            str(port),
                            "--attempts",
                            str(attempts),
                            "--timeout",
                            f"{dial_timeout:g}",
                            "--delay",
                            f"{delay:g}",
                            "--wait",
                            "30",
                        ],
                        60 + attempts * dial_timeout,
                    )
                    for node, delay in ((node_a, delays[0]), (node_b, delays[1]))
                ]
                sides = []
                for profile, future in zip((a, b), futures, strict=True):
                    done = future.result()
                    if done.exit_code != 0:
                        raise SetupError(f"punch side {profile} failed (exit {done.exit_code}): {done.output[-400:]}")
                    sides.append(side_from_report(profile, parse_agent_output(done.output)))
                result = PunchResult(
                    a=sides[0],
                    b=sides[1],
                    trial=trial,
                    skew_s=skew,
                    expected=expected,
                    delay_ms=wan_delay_ms,
                    loss=wan_loss,
                )
                say(
                    f"{a} x {b} #{trial}: {'direct' if result.direct else 'no direct path'} "
                    f"({sides[0].outcome}/{sides[1].outcome}, {result.attempts} attempt(s)), expected {expected}"
                )
                results.append(result)
    return results


def punch_table(results: Sequence[PunchResult]):
    """One row per pair: direct successes over trials, attempts used, against the RFC 4787 prediction."""
    from rich.table import Table

    title = "TCP hole punching between NAT profiles (simultaneous open, DCUtR-style)"
    if results:
        first = results[0]
        title += f", WAN delay {first.delay_ms:g} ms each way" + (f", loss {first.loss:g}%" if first.loss else "")
        if first.skew_s:
            title += f", skew {first.skew_s:g} s"
    table = Table(title=title)
    for column in ("a", "b", "expected", "direct", "attempts", "outcomes a/b", "verdict"):
        table.add_column(column, no_wrap=True)
    grouped: dict[tuple[str, str], list[PunchResult]] = {}
    for r in results:
        grouped.setdefault((r.a.profile, r.b.profile), []).append(r)
    for (a, b), runs in grouped.items():
        direct = sum(r.direct for r in runs)
        attempts = ",".join(str(r.attempts) for r in runs)
        outcomes = ", ".join(f"{r.a.outcome}/{r.b.outcome}" for r in runs[:3]) + (" ..." if len(runs) > 3 else "")
        ok = all(r.as_expected for r in runs)
        verdict = "[ok]as expected[/]" if ok else "[error]UNEXPECTED[/]"
        table.add_row(a, b, runs[0].expected.value, f"{direct}/{len(runs)}", attempts, outcomes, verdict)
    return table
