"""The floor a lab attempt is measured against: a bare TCP punch between two network namespaces, each behind
its own nft router, built and torn down with `ip netns` by this module alone (no Docker, no SUT).

    a ── lan0 [router a] eth0 ──── eth0 [router b] lan0 ── b

The routers carry the same rulesets and sysctls as the lab's (harness.nat.render, ROUTER_SYSCTLS), for the
mixed_nat profiles by default (the client behind port-restricted, the server behind openwrt-fw4-fullcone).
Each host listens on its port and dials the other's public address from that same port at once, retrying a
refused dial, as DCUtR does; the punch is done when either side has a connection. Namespaces are named
`dcutr-floor-<pid>-<n>-<x>` and always deleted, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

CLIENT_PROFILE, SERVER_PROFILE = "port-restricted", "openwrt-fw4-fullcone"
A_PORT, B_PORT = 4013, 4012
WAN = {"a": "198.51.100.1", "b": "198.51.100.2"}  # TEST-NET-2: the routers' public addresses, one /24
LAN = {"a": "192.168.1", "b": "192.168.2"}

# One side of the punch: listen on our port, dial the peer's public address from it until either connects.
PUNCH = r"""
import select, socket, sys, time
port, peer, peer_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def bound():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    return s
listener = bound()
listener.listen(4)
listener.setblocking(False)
deadline = time.monotonic() + 10
dial = None
while time.monotonic() < deadline:
    if dial is None:
        dial = bound()
        dial.setblocking(False)
        dial.connect_ex((peer, peer_port))
    ready, writable, _ = select.select([listener], [dial], [], 0.05)
    if ready:
        print("accepted"); sys.exit(0)
    if writable:
        if dial.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            print("connected"); sys.exit(0)
        dial.close(); dial = None  # refused (a reset from a router): dial again
print("no connection"); sys.exit(1)
"""


def _ip(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _in(ns: str, command: Sequence[str], stdin: str | None = None) -> None:
    done = subprocess.run(["ip", "netns", "exec", ns, *command], input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {ns} failed: {done.stderr.strip()}")


def names(tag: str) -> dict[str, str]:
    return {x: f"dcutr-floor-{tag}-{x}" for x in ("a", "ra", "rb", "b")}


def build(ns: dict[str, str]) -> None:
    from harness.nat.profiles import ROUTER_SYSCTLS, get_profile
    from harness.nat.render import render_ruleset

    for name in ns.values():
        _ip("netns", "add", name)
    _ip("-n", ns["ra"], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns["rb"])
    for side in ("a", "b"):
        host, router, lan = ns[side], ns[f"r{side}"], LAN[side]
        _ip("-n", router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", host)
        _in(router, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in ROUTER_SYSCTLS.items())])
        _ip(
            "-n", router, "-batch", "-",
            stdin=f"addr add {WAN[side]}/24 dev eth0\nlink set eth0 up\naddr add {lan}.1/24 dev lan0\n"
            "link set lan0 up\nlink set lo up\n",
        )  # fmt: skip
        _ip(
            "-n", host, "-batch", "-",
            stdin=f"addr add {lan}.2/24 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {lan}.1\n",
        )  # fmt: skip
        profile = get_profile(CLIENT_PROFILE if side == "a" else SERVER_PROFILE)
        ruleset = render_ruleset(profile, wan_if="eth0", wan_ip=WAN[side], lan_if="lan0", lan_subnet=f"{lan}.0/24")
        _in(router, ["nft", "-f", "-"], stdin=ruleset)


def punch(ns: dict[str, str]) -> str:
    sides = [
        subprocess.Popen(
            ["ip", "netns", "exec", ns["a"], "python3", "-c", PUNCH, str(A_PORT), WAN["b"], str(B_PORT)],
            stdout=subprocess.PIPE, text=True,
        ),
        subprocess.Popen(
            ["ip", "netns", "exec", ns["b"], "python3", "-c", PUNCH, str(B_PORT), WAN["a"], str(A_PORT)],
            stdout=subprocess.PIPE, text=True,
        ),
    ]  # fmt: skip
    outcomes = [side.communicate(timeout=20)[0].strip() for side in sides]
    if any(side.returncode != 0 for side in sides):
        raise RuntimeError(f"the floor's punch failed: {outcomes}")
    return "+".join(outcomes)


def teardown(ns: dict[str, str]) -> None:
    for name in ns.values():
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run_floor(index: int) -> dict[str, float]:
    """One floor run, split into build / punch / teardown (seconds), plus total."""
    ns = names(f"{os.getpid()}-{index}")
    began = time.perf_counter()
    try:
        build(ns)
        built = time.perf_counter()
        punch(ns)
        punched = time.perf_counter()
    finally:
        closing = time.perf_counter()
        teardown(ns)
    done = time.perf_counter()
    return {
        "build": built - began,
        "punch": punched - built,
        "teardown": done - closing,
        "total": done - began,
    }


def leftovers() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(f"dcutr-floor-{os.getpid()}-")]
