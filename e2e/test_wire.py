"""The delaying wire on Docker: a router's WAN link really is `delay` ms longer each way, passes a transfer far
larger than one super-frame intact in both directions, ends at once on SIGTERM, and leaves nothing behind.

These measure the feature, they are not performance targets: the bounds only say "the delay is there, once"."""

from __future__ import annotations

import ipaddress
import json
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.backends.docker import TRANSIT_IF, UPLINK_IF, DockerLab, sweep
from harness.errors import BadInput
from harness.labels import LABEL_RUN

pytestmark = pytest.mark.docker

DELAY_MS = 25.0
PORT = 5099
SIZE = 3 * 1024 * 1024 + 17  # 3 MiB and change: dozens of 64 KiB super-frames' worth, not a multiple of anything

# The public side: read everything until the client shuts down its half, answer with the sha256 of it, then send
# it all back. One connection carries the transfer each way.
SERVER = f"""
import hashlib, socket
listener = socket.create_server(("0.0.0.0", {PORT}))
listener.settimeout(60)
conn, _ = listener.accept()
conn.settimeout(60)
chunks = []
while True:
    chunk = conn.recv(1 << 16)
    if not chunk:
        break
    chunks.append(chunk)
data = b"".join(chunks)
conn.sendall(hashlib.sha256(data).hexdigest().encode() + b"\\n" + data)
conn.close()
"""

# The private side: send SIZE seeded random bytes, then read the digest line and the echo.
CLIENT = f"""
import hashlib, json, random, socket, sys, time
data = random.Random(4787).randbytes({SIZE})
deadline = time.monotonic() + 20
while True:
    try:
        sock = socket.create_connection((sys.argv[1], {PORT}), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
sock.settimeout(60)
started = time.monotonic()
sock.sendall(data)
sock.shutdown(socket.SHUT_WR)
chunks = []
while True:
    chunk = sock.recv(1 << 16)
    if not chunk:
        break
    chunks.append(chunk)
digest, _, echo = b"".join(chunks).partition(b"\\n")
print(json.dumps({{
    "sent": hashlib.sha256(data).hexdigest(),
    "server_got": digest.decode(),
    "echo": hashlib.sha256(echo).hexdigest(),
    "echo_len": len(echo),
    "seconds": round(time.monotonic() - started, 3),
}}))
"""


@pytest.fixture(scope="module")
def router_images() -> dict[str, str]:
    """Only base and router: every container here runs the router image (python3, ping, the wire)."""
    from harness.images import ensure_image

    tags = {kind: ensure_image(kind) for kind in ("base", "router")}
    tags["peer"] = tags["router"]
    return tags


def _rtts(lab: DockerLab, host: str, target: str, count: int = 8) -> list[float]:
    # The first packet also waits for ARP through the wire: warm up, then measure.
    lab.exec(host, ["ping", "-c", "1", "-W", "2", target], timeout=10)
    out = lab.must(host, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", target], "ping", timeout=30)
    return [float(ms) for ms in re.findall(r"time=([\d.]+) ms", out)]


def _labelled(lab: DockerLab) -> int:
    return len(lab.client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={lab.run_id}"}))


def _transfer(lab: DockerLab, client: str, server: str, server_ip: str) -> dict:
    with ThreadPoolExecutor(max_workers=1) as pool:
        served = pool.submit(lab.exec, server, ["python3", "-c", SERVER], 90)
        time.sleep(0.3)
        output = lab.must(client, ["python3", "-c", CLIENT, server_ip], "transfer", timeout=90)
        assert served.result().exit_code == 0, served.result().output
    report = json.loads(output.strip().splitlines()[-1])
    assert report["server_got"] == report["sent"], "the upload arrived corrupt or short"
    assert report["echo_len"] == SIZE and report["echo"] == report["sent"], "the download arrived corrupt"
    return report


def _stop_wire(wire) -> dict[str, dict[str, int]]:
    """SIGTERM the wire; it must end at once and print its counts per direction (frames *to* each port)."""
    started = time.monotonic()
    wire.stop(timeout=10)
    took = time.monotonic() - started
    wire.reload()
    assert wire.attrs["State"]["ExitCode"] == 0 and took < 5, (took, wire.attrs["State"])
    log = wire.logs().decode()
    found = re.findall(r"to (eth0|w0): received (\d+) lost (\d+) sent (\d+) failed (\d+)", log)
    assert len(found) == 2, log
    keys = ("received", "lost", "sent", "failed")
    return {port: dict(zip(keys, map(int, numbers), strict=True)) for port, *numbers in found}


def test_the_wire_delays_each_way_and_carries_a_large_transfer_intact(router_images):
    lab = DockerLab(images=router_images.__getitem__)
    try:
        delayed = lab.router("slow", "port-restricted", wan_delay_ms=DELAY_MS)
        direct = lab.router("fast", "port-restricted")
        lab.private_host("behind-slow", delayed, image=router_images["router"])
        lab.private_host("behind-fast", direct, image=router_images["router"])
        public = lab.public_host("public", image=router_images["router"])

        # Wiring: the delayed router keeps a transit address, its WAN is the veth to its wire; delay 0 is as before.
        assert delayed.wan_if == UPLINK_IF and direct.wan_if == TRANSIT_IF
        assert ipaddress.ip_address(delayed.wan_ip) in lab.transit().subnet
        assert delayed.wire == "slow-wire" and direct.wire is None
        wire = lab.container("slow-wire").get_wrapped_container()
        assert wire.labels[LABEL_RUN] == lab.run_id and wire.labels["dcutr-lab.role"] == "wire"
        assert "inet " not in lab.exec("slow-wire", ["ip", "-4", "addr", "show", "dev", "eth0"]).output
        assert "wan0" in lab.exec("slow", ["nft", "list", "ruleset"]).output

        # RTT: one wire on the path, crossed twice. The undelayed router shows what the lab adds by itself.
        slow, fast = _rtts(lab, "behind-slow", public.ip), _rtts(lab, "behind-fast", public.ip)
        assert len(slow) >= 6 and len(fast) >= 6
        assert min(slow) >= 2 * DELAY_MS * 0.95, slow
        assert min(slow) < 2 * DELAY_MS + 25, f"the delay seems applied more than once each way: {slow}"
        assert statistics.median(fast) < 2 * DELAY_MS * 0.5, fast

        # A transfer of many MiB each way over one TCP connection: nothing lost, nothing corrupt.
        _transfer(lab, "behind-slow", "public", public.ip)

        # SIGTERM ends the wire at once (Docker would wait its 10 s, then SIGKILL: exit 137), with its counts.
        counts = _stop_wire(wire)
        assert all(c["failed"] == 0 and c["lost"] == 0 for c in counts.values()), counts
        assert sum(c["sent"] for c in counts.values()) > SIZE * 2 // 1500, counts
    finally:
        lab.close()
    assert sweep(lab.client, run_id=lab.run_id) == (0, 0)
    assert _labelled(lab) == 0


def test_the_wire_cuts_super_frames_it_is_handed(router_images):
    """Senders whose veths may hand out 64 KiB GSO super-frames (the lab caps them, the host's bridge does not):
    the wire cuts them into MTU-sized segments itself and the transfer stays intact."""
    with DockerLab(images=router_images.__getitem__) as lab:
        router = lab.router("r", "port-restricted", wan_delay_ms=5)
        lab.private_host("inside", router, image=router_images["router"])
        public = lab.public_host("public", image=router_images["router"])
        for target, ifname in (("public", "eth0"), ("inside", "eth0"), ("r", "wan0"), ("r", "lan0")):
            lab.must(target, ["ip", "link", "set", "dev", ifname, "gso_max_size", "65536"], "big segments")
        _transfer(lab, "inside", "public", public.ip)
        counts = _stop_wire(lab.container("r-wire").get_wrapped_container())
    assert all(c["failed"] == 0 for c in counts.values()), counts
    assert any(c["sent"] > c["received"] for c in counts.values()), f"no super-frame reached the wire: {counts}"
    assert _labelled(lab) == 0


def _pin_neighbour(lab: DockerLab, name: str, ifname: str, peer: str, peer_ip: str) -> None:
    peer_if = TRANSIT_IF if peer == "public" else UPLINK_IF
    mac = lab.must(peer, ["cat", f"/sys/class/net/{peer_if}/address"], "read a MAC").strip()
    lab.must(name, ["ip", "neigh", "replace", peer_ip, "lladdr", mac, "dev", ifname, "nud", "permanent"], "pin")


def test_loss_drops_frames_and_zero_delay_adds_no_wire(router_images):
    with DockerLab(images=router_images.__getitem__) as lab:
        lossy = lab.router("lossy", "full-cone", wan_delay_ms=1, wan_loss=50)
        lab.private_host("behind-lossy", lossy, image=router_images["router"])
        public = lab.public_host("public", image=router_images["router"])
        # ARP crosses the wire too: three lost probes leave the neighbour FAILED and every ping "unreachable".
        # Pinning both neighbours makes the count below about ICMP loss alone.
        _pin_neighbour(lab, "lossy", lossy.wan_if, "public", public.ip)
        _pin_neighbour(lab, "public", TRANSIT_IF, "lossy", lossy.wan_ip)
        out = lab.exec("behind-lossy", ["ping", "-c", "40", "-i", "0.05", "-W", "1", public.ip], timeout=30).output
        received = int(re.search(r"(\d+) received", out).group(1))
        assert 2 <= received <= 30, out  # each direction keeps half: about 10 of 40 come back

        plain = lab.router("plain", "full-cone", wan_delay_ms=0)
        assert plain.wan_if == TRANSIT_IF
        names = {c.name for c in lab.client.containers.list(filters={"label": f"{LABEL_RUN}={lab.run_id}"})}
        assert lab.object_name("lossy-wire") in names and lab.object_name("plain-wire") not in names

        with pytest.raises(BadInput, match="belongs to the hop on transit"):
            lab.router("home", "port-restricted", upstream=plain, wan_delay_ms=5)
        with pytest.raises(BadInput, match="loss"):
            lab.router("bad", "port-restricted", wan_loss=100)
    assert _labelled(lab) == 0


def test_a_punch_through_resetting_routers_succeeds_on_a_delayed_link(router_images):
    """The reason the wire exists: openwrt-fw4 (resets unsolicited SYNs) punches reliably with WAN latency."""
    from harness.nat.punch import punch_pairs

    with DockerLab(images=router_images.__getitem__) as lab:
        results = punch_pairs([("openwrt-fw4", "port-restricted")], lab=lab, trials=3, attempts=3, wan_delay_ms=20)
    assert _labelled(lab) == 0
    assert [r.direct for r in results] == [True, True, True], [r.model_dump(mode="json") for r in results]
