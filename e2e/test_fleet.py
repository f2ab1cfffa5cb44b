"""The fleet path end to end: the SSH backend drives sshd "VMs" in a DockerLab, as it would drive real machines.

    harness host ──ssh──▶ relay-vm                   on transit (the harness host has an address there)
                 ──ssh──▶ jumpbox ──▶ <WAN>:2222 ─DNAT─▶ home-pc:22      behind openwrt-fw4-fullcone
                            └─ home-pc ──jump──▶ home-router:22 (LAN side): conntrack ground truth
                 ──ssh──▶ jumpbox ──▶ <WAN>:2222 ─DNAT─▶ client-vps:22   behind port-restricted
                            └─ client-vps ──jump──▶ client-vps-nat:22 (LAN side)

As in the fork's lab (`ssh -J root@<jumpbox> ubuntu@192.168.1.10`), the NAT'd machines are reached through a jump
box: the routers forward WAN tcp/2222 to their LAN host's tcp/22 for the jump box's address only, so the harness
host cannot reach them directly (asserted). `inventories/local.yml` says so the Ansible way: groups for roles, a
`-J root@<jumpbox>` in the `nat` group's ssh options, two-hop chains for the routers; the jump box is not an
inventory host.

The machines are the plain base image (no peer binaries: the backend uploads them) with a fresh sshd host key
(`ssh-keygen -A`; the image has none), a user `dcutr` on the VMs and root on the routers and the jump box, a
throwaway ed25519 client key and a known_hosts written by the test: strict host keys, as on a real fleet. The
routers get the port forward a home router would have (a separate nft table plus `ct status dnat accept` in the
profile's forward chain, so only the forwarded flow is affected).

`inventories/provision.yml` runs with ansible-playbook against the same inventory (OpenSSH, through the same jump
box), twice: the second run changes nothing. The runbook is `runbooks/phase6-remote-validation.yaml`, unchanged.
Cleanup: the backend's close() must leave no process and no run directory on any machine (asserted), and the
`lab` fixture removes the containers and networks and fails on any leak.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.backends.docker import DEFAULT_WAN_DELAY_MS

REPO = Path(__file__).resolve().parent.parent
PHASE6 = REPO / "runbooks" / "phase6-remote-validation.yaml"
LOCAL_INVENTORY = REPO / "inventories" / "local.yml"
PROVISION = REPO / "inventories" / "provision.yml"
FLEET_HOSTS = {"relay-vm", "home-pc", "client-vps", "home-router", "client-vps-nat"}
FORWARDED_PORT = 2222
VM_USER = "dcutr"

pytestmark = [pytest.mark.fleet, pytest.mark.docker, pytest.mark.timeout(900)]


def _phase6_scenarios() -> list[str]:
    from harness.runbook import load_runbook

    return [scenario.id for scenario in load_runbook(PHASE6).scenarios]


# -- building the fleet ---------------------------------------------------------------------------------------


def _client_key(directory: Path) -> tuple[Path, str]:
    """A throwaway ed25519 key pair in OpenSSH format: (private key file, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = directory / "id_ed25519"
    path.write_bytes(private)
    path.chmod(0o600)
    return path, public.decode() + " dcutr-lab-fleet-test"


def _sshd(lab, name: str, public_key: str, user: str) -> str:
    """Start sshd in a lab container with a fresh host key; returns that key as `type base64`."""
    home = "/root" if user == "root" else f"/home/{user}"
    add_user = "" if user == "root" else f"id {user} >/dev/null 2>&1 || useradd -m -s /bin/sh {user}\n"
    # A fresh account is locked ('!'); '*' means "no password" and lets key logins in without PAM.
    unlock = "" if user == "root" else f"usermod -p '*' {user}\n"
    script = f"""set -e
ssh-keygen -A > /dev/null
mkdir -p /run/sshd
{add_user}{unlock}mkdir -p {home}/.ssh
echo {shlex.quote(public_key)} > {home}/.ssh/authorized_keys
chown -R {user}: {home}/.ssh
chmod 700 {home}/.ssh
chmod 600 {home}/.ssh/authorized_keys
/usr/sbin/sshd -o UsePAM=no -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no
cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub
"""
    return lab.must(name, ["sh", "-c", script], "starting sshd").strip().splitlines()[-1]


def _port_forward(lab, router, lan_ip: str, source_ip: str | None) -> None:
    """WAN tcp/2222 -> lan_ip:22 on a lab router (from `source_ip` only, when given), without touching how it
    treats any other flow."""
    only = f"ip saddr {source_ip} " if source_ip else ""
    rules = f"""table ip dcutr_ssh_forward {{
    chain prerouting {{
        type nat hook prerouting priority dstnat - 10; policy accept;
        iifname "{router.wan_if}" {only}tcp dport {FORWARDED_PORT} dnat to {lan_ip}:22
    }}
}}
"""
    lab.put_file(router.name, "/etc/dcutr-lab/ssh-forward.nft", rules)
    lab.must(router.name, ["nft", "-f", "/etc/dcutr-lab/ssh-forward.nft"], "ssh port forward")
    listing = json.loads(lab.must(router.name, ["nft", "-j", "list", "chains"], "listing chains"))
    for item in listing["nftables"]:
        chain = item.get("chain")
        if chain and chain.get("hook") == "forward" and chain.get("policy") == "drop":
            lab.must(
                router.name,
                [
                    "nft",
                    "insert",
                    "rule",
                    chain["family"],
                    chain["table"],
                    chain["name"],
                    "ct",
                    "status",
                    "dnat",
                    "accept",
                ],
                "accepting the port forward",
            )


@dataclass
class Fleet:
    lab: object
    inventory: Path
    key_file: Path
    known_hosts: Path
    addresses: dict[str, str]
    directory: Path
    vms: tuple[str, ...] = ("relay", "server", "client")
    routers: tuple[str, ...] = ("server-router", "client-router")

    def assert_clean(self, run_id: str, machines: tuple[str, ...] | None = None) -> None:
        """Nothing of run `run_id` is left on any machine (or on `machines`): no process, no run directory."""
        for name in self.vms:
            if machines is not None and name not in machines:
                continue
            processes = self.lab.must(name, ["ps", "-eo", "args"], "ps")
            assert "kaspa_p2p" not in processes, f"{name}: a peer outlived close():\n{processes}"
            left = self.lab.exec(name, ["ls", "-A", f"/home/{VM_USER}/.dcutr-lab"]).output.split()
            assert run_id not in left, f"{name}: run directory left behind ({left})"
        for name in self.routers:
            if machines is not None and name not in machines:
                continue
            processes = self.lab.must(name, ["ps", "-eo", "args"], "ps")
            assert "conntrack -E" not in processes, f"{name}: the conntrack recorder outlived close()"
            left = self.lab.exec(name, ["ls", "-A", "/root/.dcutr-lab"]).output.split()
            assert run_id not in left, f"{name}: run directory left behind ({left})"

    def render(self, name: str, **changes: str) -> Path:
        """inventories/local.yml rendered for this fleet (with `changes` to its text first), as `name`."""
        import jinja2

        text = LOCAL_INVENTORY.read_text()
        for old, new in changes.items():
            assert old in text, old
            text = text.replace(old, new)
        template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(text)
        path = self.directory / name
        path.write_text(
            template.render(key_file=str(self.key_file), known_hosts=str(self.known_hosts), **self.addresses)
        )
        return path

    def ssh_config(self) -> Path:
        """An ssh_config for OpenSSH under Ansible: the fleet's key and known_hosts for every host, jump hops
        included (no -i or -o of the command line reaches a ProxyJump hop; -F does), strict host keys."""
        path = self.directory / "ssh_config"
        path.write_text(
            "Host *\n"
            f"  IdentityFile {self.key_file}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
        )
        return path


def build_fleet(lab, directory: Path, nat_profiles: dict[str, str]) -> Fleet:
    """The machines of inventories/local.yml in `lab`, sshd running, and that inventory rendered for them."""
    key_file, public_key = _client_key(directory)
    base = lab.image("base")
    known: list[str] = []
    relay = lab.public_host("relay", image=base)
    known.append(f"{relay.ip} {_sshd(lab, 'relay', public_key, VM_USER)}")
    jump = lab.public_host("jump", image=base)
    known.append(f"{jump.ip} {_sshd(lab, 'jump', public_key, 'root')}")
    addresses = {"relay_ip": relay.ip, "jump_ip": jump.ip}
    for node in ("server", "client"):
        # Real links have latency; the Docker backend's default WAN delay keeps the punch from racing the
        # openwrt router's resets (see DockerLab.router).
        router = lab.router(f"{node}-router", nat_profiles[node], wan_delay_ms=DEFAULT_WAN_DELAY_MS)
        host = lab.private_host(node, router, image=base)
        known.append(f"[{router.wan_ip}]:{FORWARDED_PORT} {_sshd(lab, node, public_key, VM_USER)}")
        known.append(f"{router.lan_ip} {_sshd(lab, router.name, public_key, 'root')}")
        _port_forward(lab, router, host.ip, source_ip=jump.ip)
        addresses[f"{node}_wan_ip"] = router.wan_ip
        addresses[f"{node}_router_lan_ip"] = router.lan_ip
    known_hosts = directory / "known_hosts"
    known_hosts.write_text("".join(line + "\n" for line in known))
    fleet = Fleet(lab, directory / "fleet.yml", key_file, known_hosts, addresses, directory)
    fleet.render("fleet.yml")
    return fleet


@pytest.fixture
def fleet(lab, tmp_path: Path) -> Fleet:
    from harness.runbook import load_runbook

    runbook = load_runbook(PHASE6)
    return build_fleet(lab, tmp_path, {name: node.nat_profile for name, node in runbook.nodes.items()})


# -- the tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario_id", _phase6_scenarios())
def test_phase6_over_ssh(fleet: Fleet, lab, run_dir: Path, scenario_id: str) -> None:
    """The phase-6 runbook, unchanged, through the SSH backend: the verdict its scenario expects."""
    from harness.backends.ssh import SshBackend
    from harness.runbook import load_runbook, run_scenario

    runbook = load_runbook(PHASE6)
    backend = SshBackend(lab.run_id, fleet.inventory)
    try:
        result = run_scenario(runbook, scenario_id, backend, run_dir / scenario_id)
    finally:
        backend.close()
    fleet.assert_clean(lab.run_id)
    missing = result.first_missing_text
    assert result.as_expected, (
        f"{scenario_id}: verdict {result.verdict}, expected {result.expected}"
        f"{f'; first missing: {missing}' if missing else ''}; error: {result.error}; report: {run_dir / scenario_id}"
    )
    if result.verdict == "direct":
        # The ground truth came over SSH from both routers, not from Docker.
        ground_truth = next(c for c in result.checkpoints if c.name == "conntrack.established")
        assert ground_truth.status == "met", ground_truth
        assert {c.router for c in result.conntrack if c.required} == {"server-router", "client-router"}
    report = (run_dir / scenario_id / "report.md").read_text()
    for real in fleet.addresses.values():
        assert real not in report, "a real address reached the report"


def test_host_keys_are_strict(lab, tmp_path: Path) -> None:
    """An unknown host key stops provisioning with one line naming the host, before anything is started; with
    accept_new_host_keys the same host is used for this run, and known_hosts is left untouched."""
    from harness.backends.ssh import SshBackend
    from harness.errors import BadInput
    from harness.models import Node, Topology

    key_file, public_key = _client_key(tmp_path)
    relay = lab.public_host("relay", image=lab.image("base"))
    _sshd(lab, "relay", public_key, VM_USER)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  hosts:\n    relay-vm:\n"
        f"      ansible_host: {relay.ip}\n      ansible_user: {VM_USER}\n"
        f"      ansible_ssh_private_key_file: {key_file}\n      dcutr_known_hosts: {known_hosts}\n"
        "      dcutr_role: relay\n"
    )
    topology = Topology(nodes={"relay": Node(role="relay")})
    backend = SshBackend(lab.run_id, inventory)
    with pytest.raises(BadInput) as refused:  # exit 2: known_hosts is what must change
        backend.provision(topology)
    message = str(refused.value)
    assert "relay-vm" in message and "not in" in message and "\n" not in message
    assert relay.ip not in message
    assert lab.exec("relay", ["test", "-e", f"/home/{VM_USER}/.dcutr-lab"]).exit_code != 0, "something was started"
    backend.close()

    trusting = SshBackend(lab.run_id, inventory, accept_new_host_keys=True)
    try:
        trusting.provision(topology)
        assert trusting.exec("relay", ["uname", "-m"]).exit_code == 0
        assert trusting.addresses()["relay"].public_ip == relay.ip
    finally:
        trusting.close()
    assert known_hosts.read_text() == "", "accept-new must not write known_hosts"
    left = lab.exec("relay", ["ls", "-A", f"/home/{VM_USER}/.dcutr-lab"]).output.split()
    assert lab.run_id not in left


def _direct_inventory(fleet: Fleet, jump: str) -> Path:
    """home-pc alone, reached directly or (with `jump`) through the jump box."""
    path = fleet.directory / ("jumped.yml" if jump else "direct.yml")
    wan = fleet.addresses["server_wan_ip"]
    args = f"      ansible_ssh_common_args: {jump}\n" if jump else ""
    path.write_text(
        "all:\n  children:\n    server:\n      hosts:\n        home-pc:\n"
        f"          ansible_host: {wan}\n          ansible_port: {FORWARDED_PORT}\n"
        f"          ansible_user: {VM_USER}\n          ansible_ssh_private_key_file: {fleet.key_file}\n"
        f"          dcutr_known_hosts: {fleet.known_hosts}\n          dcutr_public_ip: {wan}\n"
        + args.replace("      ", "          ")
    )
    return path


def test_the_jump_box_is_the_only_way_in(fleet: Fleet, lab) -> None:
    """The NAT'd machines answer through the jump box only: directly, provisioning stops with one line naming the
    host (exit 2, nothing started); with `-J root@<jumpbox>` the same host is provisioned and cleaned up."""
    from harness.backends.ssh import SshBackend
    from harness.errors import BadInput
    from harness.models import Node, Topology

    topology = Topology(nodes={"server": Node(role="server", nat_profile="openwrt-fw4-fullcone")})
    direct = SshBackend(lab.run_id, _direct_inventory(fleet, ""), connect_timeout=3)
    with pytest.raises(BadInput) as refused:
        direct.provision(topology)
    message = str(refused.value)
    assert "direct.yml:6: host 'home-pc' (port 2222): ansible_host: unreachable" in message, message
    assert "\n" not in message and fleet.addresses["server_wan_ip"] not in message
    fleet.assert_clean(lab.run_id, machines=("server",))

    jumped = SshBackend(lab.run_id, _direct_inventory(fleet, f"-J root@{fleet.addresses['jump_ip']}"))
    try:
        jumped.provision(topology)
        assert jumped.inventory.jump_chain("home-pc") == ["home-pc-jump"]
        assert jumped.exec("server", ["id", "-un"]).output.strip() == VM_USER
    finally:
        jumped.close()
    fleet.assert_clean(lab.run_id, machines=("server",))


def _recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines of ansible-playbook: host -> {ok, changed, unreachable, failed, ...}."""
    import re

    recap = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        found = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if found:
            recap[found.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(2))}
    return recap


def test_provision_playbook_prepares_the_fleet_and_a_second_run_changes_nothing(fleet: Fleet, lab) -> None:
    """`ansible-playbook -i <fleet> inventories/provision.yml`, as a user runs it (OpenSSH, through the jump box):
    every host is reached and prepared; run again, nothing changes."""
    import os
    import shutil
    import subprocess
    import tempfile

    program = shutil.which("ansible-playbook")
    assert program, "ansible-playbook is missing: pip install -e '.[test]' (ansible-core is a test dependency)"
    env = {
        **os.environ,
        # As a user's ~/.ssh/config would; ansible_ssh_args from the environment is Ansible's setting, not the
        # inventory's (which dcutr-lab reads).
        "ANSIBLE_SSH_ARGS": f"-F {fleet.ssh_config()} -o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_LOCAL_TEMP": str(fleet.directory / "ansible-local"),
        # A short directory: a control socket's path must fit in 108 bytes, and pytest's tmp paths are long.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": tempfile.mkdtemp(prefix="dcutr-cp-"),
    }

    def play() -> dict[str, dict[str, int]]:
        done = subprocess.run(
            [program, "-i", str(fleet.inventory), str(PROVISION)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        recap = _recap(done.stdout)
        assert done.returncode == 0 and set(recap) == FLEET_HOSTS, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
        for host, counts in recap.items():
            assert counts["unreachable"] == 0 and counts["failed"] == 0, (host, counts, done.stdout)
        return recap

    try:
        first, second = play(), play()
    finally:
        shutil.rmtree(env["ANSIBLE_SSH_CONTROL_PATH_DIR"], ignore_errors=True)
    # What the backend needs that the machines lacked: its private binary cache on the node hosts.
    assert {h for h, c in first.items() if c["changed"]} == {"relay-vm", "home-pc", "client-vps"}, first
    for name in fleet.vms:
        mode = lab.must(name, ["stat", "-c", "%a %U", f"/home/{VM_USER}/.dcutr-lab/bin"], "stat").strip()
        assert mode == f"700 {VM_USER}", (name, mode)
    assert all(counts["changed"] == 0 for counts in second.values()), second
